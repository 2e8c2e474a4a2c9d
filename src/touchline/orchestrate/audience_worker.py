"""Background workers of the audience engine.

The real-time worker (optional; by default the ``on_events`` hook evaluates on the
ingest thread, which is faster) takes ingest batches off the ingest thread: it only
records which users each batch touched, and re-evaluates them on its own thread.
Batches that arrive while it is busy are merged, so ingestion never waits for
audiences; the price is latency (see benchmarks/audiences.py).

The boundary worker flips time-based memberships when their moment comes.

It sleeps until the earliest row of the due index (or until the engine says a new,
possibly earlier, boundary was written), then lets the engine flip the users whose
time has come. Nothing is polled per user or per segment; the only periodic read is
``MIN(due_ms)`` on an indexed column, at most every ``max_wait_s``, so that
boundaries written by another process are seen.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..clock import Clock
from .audience_engine import AudienceEngine

__all__ = ["BoundaryWorker", "RealtimeWorker"]

log = logging.getLogger(__name__)


class BoundaryWorker:
    """A background thread with ``start()``/``stop()``, run by ``touchline serve``."""

    def __init__(self, engine: AudienceEngine, clock: Clock, *, max_wait_s: float = 1.0,
                 batch: int = 5000) -> None:
        self.engine = engine
        self.clock = clock
        self.max_wait_s = max_wait_s
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.flips = 0  # signals emitted so far, for status pages and tests

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="audience-boundaries",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.engine.wakeup.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def step(self) -> float:
        """Flip what is due; return how long to wait before the next step (seconds)."""
        # The engine wakes this worker after every real-time batch. Its look at the
        # due index joins this read-only transaction, so that frequent look never
        # takes the state store's write lock from ingest, journeys and delivery.
        with self.engine.state.transaction(read_only=True):
            due = self.engine.next_due_ms()
        now = self.clock.now_ms()
        if due is not None and due <= now:
            self.flips += len(self.engine.run_due(self.batch))
            return 0.0
        if due is None:
            return self.max_wait_s
        return min(self.max_wait_s, (due - now) / 1000)

    def _run(self) -> None:
        while not self._stop.is_set():
            # Cleared before reading the index: a boundary written after this point
            # sets it again and cuts the wait short.
            self.engine.wakeup.clear()
            try:
                wait = self.step()
            except Exception:  # a store hiccup must not end the worker; retry shortly
                log.exception("audience boundary step failed")
                wait = self.max_wait_s
            if wait > 0:
                self.engine.wakeup.wait(wait)


class RealtimeWorker:
    """Evaluates the users of committed ingest batches on its own thread."""

    def __init__(self, engine: AudienceEngine, *, max_users: int = 5000) -> None:
        self.engine = engine
        self.max_users = max_users
        self._pending: dict[str, tuple[set[int], set[str]]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def submit(self, events: Any) -> None:
        """Queue the users of a committed batch (a pyarrow Table); returns at once."""
        touched = self.engine.touched(events)
        if not touched:
            return
        with self._lock:
            for project, (users, names) in touched.items():
                mine = self._pending.setdefault(project, (set(), set()))
                mine[0].update(users)
                mine[1].update(names)
            self._idle.clear()
        self._ready.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far has been evaluated."""
        return self._idle.wait(timeout)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="audience-realtime",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Evaluate what is queued, then stop."""
        self._stop.set()
        self._ready.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for project, (users, names) in pending.items():
            ordered = sorted(users)
            for i in range(0, len(ordered), self.max_users):
                try:
                    self.engine.refresh(project, ordered[i:i + self.max_users], names)
                except Exception:  # keep serving the next batches; this one is logged
                    log.exception("real-time audience update failed for %r", project)

    def _run(self) -> None:
        while True:
            self._ready.wait()
            self._ready.clear()
            self._drain()
            with self._lock:
                if not self._pending:
                    self._idle.set()
            if self._stop.is_set():
                with self._lock:
                    if not self._pending:
                        return
