"""Hands committed ingest batches to the real-time subscribers (audiences, journeys).

Subscribers run on their own thread, so a slow one never holds back ingestion: while
they work, newly committed batches queue up and are handed over together as one
table (and one set of changed profiles). The queue is bounded: past
``max_pending_rows`` queued events, ``submit`` waits, so a subscriber that cannot keep
up slows ingestion down (the acknowledged events wait in the durable log) instead of
piling tables up in memory. Stopping delivers everything already committed before
returning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import pyarrow as pa

__all__ = ["EventDispatcher", "ProfileChanges"]

log = logging.getLogger("touchline.dispatch")


ProfileChanges = dict[str, set[int]]
"""Per project, the users whose profiles changed."""


class EventDispatcher:
    def __init__(self, deliver: Callable[[pa.Table], None],
                 deliver_profiles: Callable[[ProfileChanges], None] | None = None,
                 *, name: str = "touchline-dispatch",
                 max_pending_rows: int = 500_000,
                 on_delivered: Callable[[int], None] | None = None) -> None:
        self._name = name
        self._on_delivered = on_delivered
        self._offset: int | None = None
        self._max_rows = max_pending_rows
        self._pending_rows = 0
        self._deliver = deliver
        self._deliver_profiles = deliver_profiles
        self._pending: list[pa.Table] = []
        self._profiles: ProfileChanges = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def submit(self, table: pa.Table, offset: int | None = None) -> None:
        """Queue a batch's events; ``offset`` (the ingest log position the batch ends
        at) reaches ``on_delivered`` once the batch and all before it are delivered."""
        if self._thread is None:
            # Not started (CLI, tests): deliver in the caller.
            if table.num_rows:
                self._call(table)
            self._delivered(offset)
            return
        with self._cond:
            while self._pending_rows >= self._max_rows and not self._stopping:
                self._cond.wait()
            self._pending.append(table)
            self._pending_rows += table.num_rows
            if offset is not None:
                self._offset = offset if self._offset is None else max(self._offset, offset)
            self._cond.notify_all()

    def _delivered(self, offset: int | None) -> None:
        if offset is not None and self._on_delivered is not None:
            try:
                self._on_delivered(offset)
            except Exception:  # the position is re-recorded with the next batch
                log.exception("recording the delivered position %d failed", offset)

    def submit_profiles(self, changed: Mapping[str, set[int]]) -> None:
        if self._deliver_profiles is None or not changed:
            return
        if self._thread is None:
            self._call_profiles(dict(changed))
            return
        with self._cond:
            for project, users in changed.items():
                self._profiles.setdefault(project, set()).update(users)
            self._cond.notify_all()

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._profiles and not self._stopping:
                    self._cond.wait()
                if not self._pending and not self._profiles:
                    return
                batch, self._pending = self._pending, []
                profiles, self._profiles = self._profiles, {}
                offset, self._offset = self._offset, None
            rows = [t for t in batch if t.num_rows]
            if rows:
                self._call(pa.concat_tables(rows) if len(rows) > 1 else rows[0])
            if profiles:
                self._call_profiles(profiles)
            self._delivered(offset)
            # Only now is the batch's memory free: waiting submitters may go on.
            with self._cond:
                self._pending_rows -= sum(t.num_rows for t in batch)
                self._cond.notify_all()

    def _call_profiles(self, changed: ProfileChanges) -> None:
        assert self._deliver_profiles is not None
        try:
            self._deliver_profiles(changed)
        except Exception:  # as for events: never stop the others or ingest
            log.exception("real-time subscriber failed on %d changed profiles",
                          sum(len(u) for u in changed.values()))

    def _call(self, table: pa.Table) -> None:
        try:
            self._deliver(table)
        except Exception:  # one failing subscriber must not stop the others or ingest
            log.exception("real-time subscriber failed on %d events", table.num_rows)
