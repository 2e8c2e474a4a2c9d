"""The columnar cache: a project's events as numpy arrays sorted by (user, time).

Every analysis is a pass over these arrays, so they are kept in the layout the
kernels want: ``uidx`` (dense user index, int32), ``times`` (int64 ms UTC), ``codes``
(int32 event codes into ``vocab``), and ``ustart`` (row offsets where each user's
events begin). Property columns are fetched on first use and kept dictionary
encoded. :meth:`EventCache.refresh` fetches only events received since the last
refresh and merges them in; when the count does not add up (a late commit, a
deletion) it reloads everything.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..clock import Clock, SystemClock
from .source import BASE_COLUMNS, EventSource, Stamp

__all__ = ["CacheStore", "EventCache", "PropColumn"]

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]


@dataclass
class PropColumn:
    """A dictionary-encoded string column: ``codes`` index ``values``, -1 where unset."""

    codes: I32
    values: list[str]
    _numbers: npt.NDArray[np.float64] | None = field(default=None, repr=False)

    @classmethod
    def from_arrow(cls, arr: pa.Array | pa.ChunkedArray) -> PropColumn:
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
        arr = arr.cast(pa.string())
        enc = pc.dictionary_encode(arr)
        codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
        return cls(codes=codes, values=[str(v) for v in enc.dictionary.to_pylist()])

    def value_numbers(self) -> npt.NDArray[np.float64]:
        """The dictionary values as floats (NaN where a value is not a number)."""
        if self._numbers is None:
            out = np.full(len(self.values), np.nan)
            for i, v in enumerate(self.values):
                try:
                    out[i] = float(v)
                except ValueError:
                    pass
            self._numbers = out
        return self._numbers

    def numbers(self) -> npt.NDArray[np.float64]:
        """The column as floats, NaN where unset or not a number."""
        lut = np.append(self.value_numbers(), np.nan)
        return lut[np.where(self.codes < 0, len(self.values), self.codes)]

    def numbers_at(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """``numbers()[rows]`` without converting the whole column."""
        lut = np.append(self.value_numbers(), np.nan)
        codes = self.codes[rows]
        out: npt.NDArray[np.float64] = lut[np.where(codes < 0, len(self.values), codes)]
        return out

    def take(self, order: npt.NDArray[np.int64]) -> PropColumn:
        return PropColumn(self.codes[order], self.values)

    def strings(self) -> npt.NDArray[np.object_]:
        lut = np.array([*self.values, None], dtype=object)
        out: npt.NDArray[np.object_] = lut[np.where(self.codes < 0, len(self.values), self.codes)]
        return out


def _concat_props(a: PropColumn, b: PropColumn) -> PropColumn:
    index = {v: i for i, v in enumerate(a.values)}
    values = list(a.values)
    remap = np.empty(len(b.values) + 1, dtype=np.int32)
    for j, v in enumerate(b.values):
        if v not in index:
            index[v] = len(values)
            values.append(v)
        remap[j] = index[v]
    remap[-1] = -1
    b_codes = remap[np.where(b.codes < 0, len(b.values), b.codes)]
    return PropColumn(np.concatenate([a.codes, b_codes]).astype(np.int32), values)


class EventCache:
    """One project's events in memory. Build with :meth:`load`, keep fresh with :meth:`refresh`."""

    def __init__(self, source: EventSource, project: str) -> None:
        self.source = source
        self.project = project
        self.stamp: Stamp = (-1, -1, -1)
        self.uidx: I32 = np.empty(0, np.int32)
        self.times: I64 = np.empty(0, np.int64)
        self.codes: I32 = np.empty(0, np.int32)
        self.keys: I64 = np.empty(0, np.int64)
        self.users: I64 = np.empty(0, np.int64)
        self.ustart: I64 = np.zeros(1, np.int64)
        self.vocab: list[str] = []
        self.code_of: dict[str, int] = {}
        self._props: dict[str, PropColumn] = {}
        self._profile_props: dict[str, PropColumn] = {}
        self._lock = threading.RLock()
        self._origin: EventCache | None = None

    def snapshot(self) -> EventCache:
        """A view that a later refresh leaves alone: an analysis reads its arrays at
        several moments, and they must all be of the same generation. (The arrays are
        never changed in place, so the view shares them.)"""
        with self._lock:
            snap = copy.copy(self)
            snap._props = dict(self._props)
            snap._profile_props = dict(self._profile_props)
            snap._origin = self
            return snap

    def _share(self, name: str, col: PropColumn, profile: bool) -> None:
        """Hand a column fetched by a snapshot back to the live cache, if still current."""
        origin = self._origin
        if origin is not None and origin.stamp == self.stamp:
            with origin._lock:
                if origin.stamp == self.stamp:
                    (origin._profile_props if profile else origin._props).setdefault(name, col)

    @property
    def n(self) -> int:
        return int(self.times.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.users.shape[0])

    def code(self, event: str) -> int:
        """The code of ``event``, or -1 when no such event was ever seen."""
        return self.code_of.get(event, -1)

    # -- loading ---------------------------------------------------------------------

    def _encode_events(self, col: pa.ChunkedArray) -> I32:
        enc = pc.dictionary_encode(col.combine_chunks() if col.num_chunks else pa.array(
            [], pa.string()))
        remap = np.empty(len(enc.dictionary), dtype=np.int32)
        for j, name in enumerate(enc.dictionary.to_pylist()):
            name = str(name)
            if name not in self.code_of:
                self.code_of[name] = len(self.vocab)
                self.vocab.append(name)
            remap[j] = self.code_of[name]
        idx = enc.indices.to_numpy(zero_copy_only=False)
        return remap[idx] if len(idx) else np.empty(0, np.int32)

    def _set_rows(self, user_ids: I64, times: I64, codes: I32, keys: I64) -> None:
        self.times, self.codes, self.keys = times, codes, keys
        change = np.flatnonzero(np.diff(user_ids)) + 1 if len(user_ids) else np.empty(0, np.int64)
        starts = np.concatenate([[0], change]).astype(np.int64) if len(user_ids) else np.empty(
            0, np.int64)
        self.users = user_ids[starts] if len(user_ids) else np.empty(0, np.int64)
        self.ustart = np.append(starts, len(user_ids)).astype(np.int64)
        counts = np.diff(self.ustart)
        self.uidx = np.repeat(np.arange(len(self.users), dtype=np.int32), counts)
        self._profile_props.clear()

    def load(self) -> None:
        """Read every event of the project (a full reload)."""
        with self._lock:
            stamp = self.source.stamp(self.project)
            t = self.source.scan(self.project, BASE_COLUMNS, received_until_ms=stamp[0])
            self.vocab, self.code_of = [], {}
            self._set_rows(
                t.column("user_id").to_numpy().astype(np.int64),
                t.column("time").to_numpy().astype(np.int64),
                self._encode_events(t.column("event")),
                t.column("event_key").to_numpy().astype(np.int64),
            )
            names = list(self._props)
            self._props.clear()
            for name in names:
                self.prop(name)
            self.stamp = stamp

    def refresh(self) -> bool:
        """Bring the cache up to date; returns whether anything changed."""
        with self._lock:
            stamp = self.source.stamp(self.project)
            if stamp == self.stamp:
                return False
            if self.stamp[1] < 0 or stamp[0] < self.stamp[0] or stamp[2] != self.stamp[2]:
                self.load()
                return True
            cols = [*BASE_COLUMNS, *(f"properties.{p}" for p in self._props)]
            delta = self.source.scan(self.project, cols, received_after_ms=self.stamp[0],
                                     received_until_ms=stamp[0])
            if self.n + delta.num_rows != stamp[1]:
                self.load()  # something arrived late or was removed: start over
                return True
            user_ids = np.concatenate([self.users[self.uidx],
                                       delta.column("user_id").to_numpy().astype(np.int64)])
            times = np.concatenate([self.times, delta.column("time").to_numpy().astype(np.int64)])
            codes = np.concatenate([self.codes, self._encode_events(delta.column("event"))])
            keys = np.concatenate([self.keys, delta.column("event_key").to_numpy().astype(
                np.int64)])
            order = np.lexsort((keys, times, user_ids))
            for name, col in list(self._props.items()):
                merged = _concat_props(col, PropColumn.from_arrow(
                    delta.column(f"properties.{name}")))
                self._props[name] = merged.take(order)
            self._set_rows(user_ids[order], times[order], codes[order].astype(np.int32),
                           keys[order])
            self.stamp = stamp
            return True

    # -- properties ------------------------------------------------------------------

    def prop(self, name: str) -> PropColumn:
        """The event property ``name`` for every row (fetched once, then kept)."""
        with self._lock:
            col = self._props.get(name)
            if col is None:
                t = self.source.scan(self.project, [f"properties.{name}"],
                                     received_until_ms=self.stamp[0])
                col = PropColumn.from_arrow(t.column(0))
                if len(col.codes) != self.n:
                    # The source moved on since the last refresh; the next refresh reloads.
                    col = PropColumn(np.full(self.n, -1, np.int32), [])
                self._props[name] = col
                self._share(name, col, profile=False)
            return col

    def profile_prop(self, name: str) -> PropColumn:
        """The profile property ``name`` for every user of the cache (index = ``uidx``)."""
        with self._lock:
            col = self._profile_props.get(name)
            if col is None:
                t = self.source.profiles(self.project, [name])
                ids = t.column("user_id").to_numpy().astype(np.int64)
                vals = PropColumn.from_arrow(t.column(name))
                codes = np.full(self.n_users, -1, np.int32)
                pos = np.searchsorted(self.users, ids)
                ok = (pos < self.n_users) & (self.users[np.minimum(pos, self.n_users - 1)] == ids)
                codes[pos[ok]] = vals.codes[ok]
                col = PropColumn(codes, vals.values)
                self._profile_props[name] = col
                self._share(name, col, profile=True)
            return col

    def user_positions(self, user_ids: npt.ArrayLike) -> I64:
        """Dense indexes of the given user ids (those not in the cache are dropped)."""
        ids = np.asarray(user_ids, dtype=np.int64)
        if self.n_users == 0 or ids.size == 0:
            return np.empty(0, np.int64)
        pos = np.searchsorted(self.users, ids)
        ok = (pos < self.n_users) & (self.users[np.minimum(pos, self.n_users - 1)] == ids)
        return np.asarray(pos[ok], dtype=np.int64)


class CacheStore:
    """The caches of all projects of one event source, created on first use.

    A cache asks the source whether anything arrived at most once per
    ``refresh_interval_ms``: answers may lag ingestion by that much, and a burst of
    questions costs one look at the store instead of one each.
    """

    def __init__(self, source: EventSource, *, clock: Clock | None = None,
                 refresh_interval_ms: int = 1000) -> None:
        self.source = source
        self.clock: Clock = clock or SystemClock()
        self.refresh_interval_ms = refresh_interval_ms
        self._caches: dict[str, EventCache] = {}
        self._checked: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, project: str, *, refresh: bool = True) -> EventCache:
        """A consistent snapshot of the project's cache (refreshed first when due)."""
        now = self.clock.now_ms()
        with self._lock:
            cache = self._caches.get(project)
            if cache is None:
                cache = self._caches[project] = EventCache(self.source, project)
            due = now - self._checked.get(project, -(2**62)) >= self.refresh_interval_ms
            if refresh and due:
                self._checked[project] = now
        if refresh and due:
            cache.refresh()
        return cache.snapshot()

    def invalidate(self, project: str | None = None) -> None:
        """Drop cached data (after identities were merged or split, for example)."""
        with self._lock:
            if project is None:
                self._caches.clear()
                self._checked.clear()
            else:
                self._caches.pop(project, None)
                self._checked.pop(project, None)
