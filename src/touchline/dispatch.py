"""Hands committed ingest batches to the real-time subscribers (audiences, journeys).

Subscribers run on their own thread, so a slow one never holds back ingestion: while
they work, newly committed batches queue up and are handed over together as one
table. Stopping delivers everything already committed before returning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pyarrow as pa

__all__ = ["EventDispatcher"]

log = logging.getLogger("touchline.dispatch")


class EventDispatcher:
    def __init__(self, deliver: Callable[[pa.Table], None]) -> None:
        self._deliver = deliver
        self._pending: list[pa.Table] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def submit(self, table: pa.Table) -> None:
        if self._thread is None:
            self._call(table)  # not started (CLI, tests): deliver in the caller
            return
        with self._cond:
            self._pending.append(table)
            self._cond.notify()

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="touchline-dispatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            self._call(pa.concat_tables(batch) if len(batch) > 1 else batch[0])

    def _call(self, table: pa.Table) -> None:
        try:
            self._deliver(table)
        except Exception:  # one failing subscriber must not stop the others or ingest
            log.exception("real-time subscriber failed on %d events", table.num_rows)
