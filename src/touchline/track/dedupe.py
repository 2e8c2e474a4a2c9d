"""The duplicate filter: drops records whose (project, event_id) was seen recently.

Kept compact so that tens of millions of remembered ids fit in a few hundred MB:
the newest ids sit in a Python set; once it holds ``seal_at`` ids it is frozen into a
sorted numpy array of 64-bit hashes (8 bytes an id), looked up a batch at a time with
``searchsorted``. The set costs some 60 bytes an id, so it is sealed early; a new
generation is merged into the previous one while that holds fewer than
``merge_below`` ids, so that lookups search a few large arrays, not many small ones.
Sealed generations expire when their newest id is older than the horizon (a merged
one when its newest is: an id may be remembered a generation longer, never shorter). A 64-bit hash collision would drop a distinct event: with 10^8 ids
remembered, a new id collides with probability about 5 in 10^12, which we accept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import xxhash

__all__ = ["DuplicateFilter", "event_key"]


def event_key(project: str, event_id: str) -> int:
    return xxhash.xxh3_64_intdigest(f"{project}\x00{event_id}".encode())


class DuplicateFilter:
    def __init__(
        self, horizon_ms: int, *, seal_at: int = 250_000, merge_below: int = 2_000_000
    ) -> None:
        self._horizon = horizon_ms
        self._seal_at = seal_at
        self._merge_below = merge_below
        self._current: set[int] = set()
        self._current_newest = 0
        self._sealed: list[tuple[np.ndarray, int]] = []  # (sorted hashes, newest ms)

    def __len__(self) -> int:
        return len(self._current) + sum(len(a) for a, _ in self._sealed)

    def add_known(self, keys: Iterable[int], newest_ms: int) -> None:
        """Remember keys without checking them (rebuilding from the event store)."""
        self._current.update(keys)
        self._current_newest = max(self._current_newest, newest_ms)
        self._maybe_seal()

    def filter(self, keys: Sequence[int], received_ms: Sequence[int]) -> list[bool]:
        """For each key, True when it is new (and remember it), False for a duplicate.

        A key repeated inside the same batch counts as a duplicate after its first use.
        """
        fresh = [True] * len(keys)
        if self._sealed and keys:
            arr = np.fromiter(keys, dtype=np.uint64, count=len(keys))
            for sealed, _ in self._sealed:
                idx = np.searchsorted(sealed, arr)
                idx[idx >= len(sealed)] = 0
                hit = sealed[idx] == arr
                if hit.any():
                    for j in np.flatnonzero(hit).tolist():
                        fresh[j] = False
        current = self._current
        newest = self._current_newest
        for i, k in enumerate(keys):
            if not fresh[i]:
                continue
            if k in current:
                fresh[i] = False
            else:
                current.add(k)
                if received_ms[i] > newest:
                    newest = received_ms[i]
        self._current_newest = newest
        self._maybe_seal()
        return fresh

    def expire(self, now_ms: int) -> None:
        cutoff = now_ms - self._horizon
        self._sealed = [(a, newest) for a, newest in self._sealed if newest >= cutoff]

    def _maybe_seal(self) -> None:
        if len(self._current) < self._seal_at:
            return
        arr = np.fromiter(self._current, dtype=np.uint64, count=len(self._current))
        arr.sort()
        newest = self._current_newest
        if self._sealed and len(self._sealed[-1][0]) < self._merge_below:
            last, last_newest = self._sealed.pop()
            # Two sorted runs: the stable sort (timsort) merges them in linear time.
            arr = np.concatenate((last, arr))
            arr.sort(kind="stable")
            newest = max(newest, last_newest)
        self._sealed.append((arr, newest))
        self._current = set()
        self._current_newest = 0
