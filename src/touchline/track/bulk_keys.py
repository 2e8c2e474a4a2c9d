"""Duplicate detection for bulk import, a chunk at a time in numpy.

An import remembers the 64-bit keys of the event ids it loaded (and of those the
store received during the dedupe horizon). Event ids that are 32 hex digits (the
Sensors content hash, CSV/Parquet md5s) key on their first 16 digits, computed in
numpy; any other id (a Segment messageId, say) keys on its xxh3-64 hash. A collision
would drop one distinct event in about 10^11 for an import of 10^8 events, which we
accept, as the collector's filter does.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

__all__ = ["IdOwners", "KeySet", "event_keys"]

# Hex digit value per byte; 255 marks a byte that is not a lowercase hex digit.
_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


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
                # Two nibbles a byte, eight bytes big-endian: the first 16 digits' value.
                packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
                return np.ascontiguousarray(packed).view(">u8").ravel().astype(np.uint64)
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
        self.fresh(keys)

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
        """Add sorted keys that no generation holds yet.

        Generations are tiered by size (each at least twice the next): a new one is
        merged into the last while it is not smaller than half of it, so there are
        O(log n) of them and every key is merged O(log n) times. The generations are
        disjoint, so a merge is a sort, without np.unique's hashing; a stable sort (a
        timsort) finds the two sorted runs and merges them in linear time."""
        if not len(sorted_keys):
            return
        generations = self._generations
        while generations and 2 * len(sorted_keys) >= len(generations[-1]):
            sorted_keys = np.sort(np.concatenate([generations.pop(), sorted_keys]), kind="stable")
        generations.append(sorted_keys)

class IdOwners:
    """Identity value -> the profile it resolved to in this import, per identity type.

    A table in an in-memory DuckDB, looked up once per distinct value of a chunk by
    a hash join. A Python dict took 0.9 us a lookup once it held a million values
    (a cache miss for the hash slot and another for the key), three times the join,
    and held the GIL the fast path's thread needs; an Arrow set lookup (pc.index_in)
    would rebuild its hash table of every known value per chunk."""

    def __init__(self) -> None:
        self._con = duckdb.connect()
        self._con.execute(
            "CREATE TABLE owners (id_type VARCHAR NOT NULL, v VARCHAR NOT NULL, owner BIGINT)")
        self._types: set[str] = set()

    def close(self) -> None:
        self._con.close()

    def clear(self) -> None:
        self._con.execute("DELETE FROM owners")
        self._types.clear()

    def lookup(self, id_type: str, values: pa.Array) -> np.ndarray:
        """The owner of each value (int64), -1 for a value not resolved yet."""
        out = np.full(len(values), -1, dtype=np.int64)
        if id_type not in self._types or not len(values):
            return out
        self._con.register("__tl_values", pa.table({
            "i": pa.array(np.arange(len(values), dtype=np.int64)), "v": values}))
        try:
            found = self._con.sql(
                "SELECT q.i, o.owner FROM __tl_values AS q JOIN owners AS o"
                " ON o.id_type = $t AND o.v = q.v", params={"t": id_type}).fetchnumpy()
        finally:
            self._con.unregister("__tl_values")
        out[found["i"]] = found["owner"]
        return out

    def add(self, id_type: str, values: pa.Array, owners: np.ndarray) -> None:
        """Set the owner of each of the distinct ``values`` (replacing an earlier one)."""
        if not len(values):
            return
        self._con.register("__tl_values", pa.table({
            "v": values, "owner": pa.array(np.asarray(owners, dtype=np.int64))}))
        try:
            if id_type in self._types:
                self._con.execute(
                    "DELETE FROM owners WHERE id_type = $t AND v IN (SELECT v FROM __tl_values)",
                    {"t": id_type})
            self._con.execute("INSERT INTO owners SELECT $t, v, owner FROM __tl_values",
                              {"t": id_type})
        finally:
            self._con.unregister("__tl_values")
        self._types.add(id_type)
