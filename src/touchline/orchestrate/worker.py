"""Background workers: the journey timer loop and the outbox delivery loop.

Both run inside ``touchline serve`` (through the ``workers`` hook) or alone as
``touchline worker``. Each is a thread with ``start()`` / ``stop()``; ``stop`` returns
once the loop is idle. Several processes may run them against one PostgreSQL state
store: claims skip rows another worker holds, so a user is never stepped twice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import uvloop

from ..errors import StoreError
from .engine import Engine, JourneyEvent, segment_event
from .outbox import Outbox
from .storage import cursor_get, cursor_set

__all__ = ["DeliveryWorker", "JourneyWorker", "consume_segment_signals"]

log = logging.getLogger(__name__)

SIGNAL_CURSOR = "segment_signals"


def consume_segment_signals(engine: Engine, limit: int = 10_000) -> int:
    """Feed segment enter/exit signals after the stored cursor to the engine.

    The cursor moves in the same transaction as the journey changes the signals
    cause, so a crash replays nothing twice and skips nothing.
    """
    from .segments import signals_after

    store = engine.store
    with store.transaction(read_only=True) as tx:
        # Look before taking the write lock: most polls find nothing new.
        if not signals_after(tx, cursor_get(tx, SIGNAL_CURSOR), 1):
            return 0
    with store.transaction() as tx:
        # Lock the cursor row where the backend can, so two workers do not both
        # take the same signals.
        row = tx.fetchone(f"SELECT value FROM journey_cursors WHERE name = ?"
                          f"{store.dialect.for_update}", (SIGNAL_CURSOR,))
        after = int(row[0]) if row is not None else cursor_get(tx, SIGNAL_CURSOR)
        changes = signals_after(tx, after, limit)
        if not changes:
            return 0
        engine.handle_events([
            JourneyEvent(c.project, c.user_id, segment_event(c.segment, c.change), c.at_ms,
                         {"segment": c.segment}, f"seg:{c.id}")
            for c in changes])
        cursor_set(tx, SIGNAL_CURSOR, changes[-1].id)
    return len(changes)


class _Loop:
    """A thread that calls ``step`` until stopped, pausing when there is no work."""

    name = "journey-loop"

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _main(self) -> None:
        raise NotImplementedError


class JourneyWorker(_Loop):
    """Fires due timers, consumes segment signals and runs schedules.

    ``on_progress`` is called after a round that moved users (it wakes the delivery
    loop, so messages written by timers go out without waiting for its poll).
    """

    name = "journey-timers"

    def __init__(self, engine: Engine, *, batch: int = 2000, poll_s: float = 0.05,
                 schedule_every_s: float = 1.0, signals: bool = True,
                 on_progress: Callable[[], None] | None = None) -> None:
        super().__init__(poll_s)
        self.on_progress = on_progress
        self.engine = engine
        self.batch = batch
        self.schedule_every_s = schedule_every_s
        self.signals = signals
        self.transitions = 0

    def step(self) -> int:
        """One round of work; returns how much was done (0 means idle)."""
        done = self.engine.run_due(self.batch)
        self.transitions += done
        if self.signals:
            try:
                done += consume_segment_signals(self.engine)
            except StoreError as exc:
                # Audiences not installed in this store: nothing to consume.
                if "segment_history" not in str(exc):
                    raise
                self.signals = False
        return done

    def _main(self) -> None:
        last_schedule = 0.0
        clock = self.engine.clock
        while not self._stop.is_set():
            try:
                done = self.step()
                now_s = clock.now_ms() / 1000
                if now_s - last_schedule >= self.schedule_every_s:
                    last_schedule = now_s
                    done += self.engine.run_schedules()
            except Exception:  # a bad row must not kill the loop; it is logged
                self.errors += 1
                log.exception("journey worker round failed")
                done = 0
            if done and self.on_progress is not None:
                self.on_progress()
            if not done:
                self._stop.wait(self.poll_s)


class DeliveryWorker(_Loop):
    """Sends outbox rows; one asyncio loop in its own thread."""

    name = "journey-delivery"

    def __init__(self, outbox: Outbox, *, batch: int = 64, poll_s: float = 0.05) -> None:
        super().__init__(poll_s)
        self.outbox = outbox
        self.batch = batch  # most messages in flight at once

    def stop(self) -> None:
        self._stop.set()
        self.outbox.wake()  # end the loop's wait now, not at its next poll
        super().stop()

    def _main(self) -> None:
        # uvloop: the channels' HTTP clients spend most of their time in the loop.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._run())

    async def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    await self.outbox.run(self._stop.is_set, poll_s=self.poll_s,
                                          max_inflight=self.batch)
                except Exception:  # logged; the rows stay claimable after their lease
                    self.errors += 1
                    log.exception("delivery round failed")
                    await asyncio.sleep(self.poll_s)
        finally:
            for channel in self.outbox.channels.values():
                await channel.aclose()
