"""Duplicate detection for bulk import, a chunk at a time in numpy.

An import remembers the 64-bit keys of the event ids it loaded (and of those the
store received during the dedupe horizon). Event ids that are 32 hex digits (the
Sensors content hash, CSV/Parquet md5s) key on their first 16 digits, computed in
numpy; any other id (a Segment messageId, say) keys on its xxh3-64 hash. A collision
would drop one distinct event in about 10^11 for an import of 10^8 events, which we
accept, as the collector's filter does.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

__all__ = ["KeySet", "event_keys"]

# Hex digit value per byte; 255 marks a byte that is not a lowercase hex digit.
_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_MERGE_AT = 8  # generations of sorted keys before they are merged into one


def event_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The 64-bit key of each event id (uint64)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if ids.null_count == 0 and ids.type in (pa.string(), pa.large_string()):
        lengths = pc.binary_length(ids).to_numpy()
        if (lengths == 32).all():
            start = ids.offset
            width = np.int64 if ids.type == pa.large_string() else np.int32
            first = int(np.frombuffer(ids.buffers()[1], dtype=width)[start])
            data = np.frombuffer(ids.buffers()[2], dtype=np.uint8)[first:first + 32 * n]
            nibbles = _NIBBLE[data.reshape(n, 32)[:, :16]]
            if (nibbles != 255).all():
                out = np.zeros(n, dtype=np.uint64)
                for column in range(16):
                    out = (out << np.uint64(4)) | nibbles[:, column].astype(np.uint64)
                return out
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(str(v).encode()) for v in ids.to_pylist()),
                       dtype=np.uint64, count=n)


class KeySet:
    """Keys seen so far, as a few sorted numpy arrays."""

    def __init__(self) -> None:
        self._generations: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(g) for g in self._generations)

    def add(self, keys: np.ndarray) -> None:
        if len(keys):
            self._push(np.unique(keys))

    def fresh(self, keys: np.ndarray) -> np.ndarray:
        """Per key, True when it is new (it is then remembered), False for one seen
        before, including earlier in ``keys``."""
        fresh = np.zeros(len(keys), dtype=bool)
        if not len(keys):
            return fresh
        unique, first = np.unique(keys, return_index=True)
        known = np.zeros(len(unique), dtype=bool)
        for generation in self._generations:
            at = np.searchsorted(generation, unique)
            at[at >= len(generation)] = 0
            known |= generation[at] == unique
        fresh[first[~known]] = True
        self._push(unique[~known])
        return fresh

    def _push(self, sorted_keys: np.ndarray) -> None:
        if not len(sorted_keys):
            return
        self._generations.append(sorted_keys)
        if len(self._generations) > _MERGE_AT:
            self._generations = [np.unique(np.concatenate(self._generations))]
