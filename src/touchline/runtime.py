"""The open stores, clock and settings of one data directory.

Features receive a :class:`Runtime` through the hooks in :mod:`touchline.plugins`.
Attributes:

- ``settings``: :class:`touchline.config.Settings`
- ``clock``: :class:`touchline.clock.Clock`
- ``state``: the state store (``touchline.store.state``), transactional truth
- ``events``: the event store (``touchline.store.events``), analytical
- ``plugins``: the pluggy plugin manager
- ``log`` / ``pipeline`` / ``sink``: the ingest log, the pipeline that drains it, and
  the sink collectors submit to (None when opened without ingest)
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .clock import Clock, SystemClock
from .config import Settings
from .track.sink import Project

if TYPE_CHECKING:
    from .track.importer import ImportProgress, ImportReport

__all__ = ["Runtime", "StateProjects", "open_runtime"]

ADMIN_TOKEN_FILE = "admin-token"


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    state: Any
    events: Any
    plugins: Any
    log: Any = None
    pipeline: Any = None
    sink: Any = None
    dispatcher: Any = None
    stitched_dispatcher: Any = None
    admin_token: str = ""
    new_admin_token: bool = False
    _workers: list[Any] = field(default_factory=list)
    # One import at a time: each holds the ingest pipeline and rebuilds the replica.
    _import_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def projects(self) -> StateProjects:
        return StateProjects(self.state)

    def start_workers(self) -> None:
        for dispatcher in (self.stitched_dispatcher, self.dispatcher):
            if dispatcher is not None:
                dispatcher.start()
        if self.pipeline is not None:
            self.pipeline.start()
        for group in self.plugins.hook.workers(runtime=self):
            for worker in group or []:
                worker.start()
                self._workers.append(worker)

    def stop_workers(self) -> None:
        # Ingest first: everything acknowledged reaches the stores before the rest stops.
        if self.pipeline is not None:
            self.pipeline.stop()
        for dispatcher in (self.stitched_dispatcher, self.dispatcher):
            if dispatcher is not None:
                dispatcher.stop()
        for worker in reversed(self._workers):
            worker.stop()
        self._workers.clear()

    def import_files(
        self, paths: Sequence[str | os.PathLike[str]], *, project: str, fmt: str,
        progress: Callable[[ImportProgress], None] | None = None,
        time_window: bool | None = None,
    ) -> ImportReport:
        """Bulk-load files (:func:`touchline.track.importer.import_files`) with this
        data directory's stores, stitching policy and clock.

        The ingest pipeline, if any, waits meanwhile, and then remembers the imported
        event ids: a record acknowledged live but not applied yet, or sent again live
        later, is then dropped as the duplicate it is."""
        from .track.importer import import_files
        from .track.stitch import StitchPolicy

        pipeline = self.pipeline
        with self._import_lock, pipeline.paused() if pipeline is not None else nullcontext():
            started_ms = self.clock.now_ms()
            try:
                return import_files(
                    [Path(p) for p in paths], project=project, fmt=fmt,
                    event_store=self.events, state_store=self.state, progress=progress,
                    clock=self.clock, policy=StitchPolicy.from_settings(self.settings),
                    time_window=(self.settings.sensors_time_window if time_window is None
                                 else time_window),
                )
            finally:
                # Also after a failure: what was loaded before it stays loaded.
                if pipeline is not None:
                    pipeline.remember_since(started_ms)

    def close(self) -> None:
        self.stop_workers()
        if self.log is not None:
            self.log.close()
        self.events.close()
        self.state.close()


class StateProjects:
    """The project directory collectors use, read from the state store.

    Lookups are cached for a second: a collector asks on every request, and a project
    created from the CLI must show up without a restart.
    """

    _ttl = 1.0

    def __init__(self, state: Any) -> None:
        self._state = state
        self._loaded = 0.0
        self._by_name: dict[str, Project] = {}
        self._by_key: dict[str, Project] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._loaded < self._ttl:
            return
        with self._state.transaction(read_only=True) as tx:
            projects = list(tx.list_projects())
        self._by_name = {p.name: p for p in projects}
        self._by_key = {p.write_key: p for p in projects}
        self._loaded = now

    def by_name(self, name: str) -> Project | None:
        self._refresh()
        return self._by_name.get(name)

    def by_write_key(self, key: str) -> Project | None:
        self._refresh()
        return self._by_key.get(key)


def _admin_token(settings: Settings) -> tuple[str, bool]:
    if settings.admin_token:
        return settings.admin_token, False
    path = settings.data_dir / ADMIN_TOKEN_FILE
    if path.is_file():
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def open_runtime(settings: Settings, *, clock: Clock | None = None, ingest: bool = True) -> Runtime:
    """Open the stores of a data directory (creating it on first use)."""
    from .dispatch import EventDispatcher
    from .plugins import plugin_manager
    from .store.events import open_event_store
    from .store.state import open_state_store
    from .track.decode import DecodeOptions
    from .track.identity import use_identity_cache
    from .track.ingest import STITCHED_CURSOR, IngestPipeline, LogSink
    from .track.log import IngestLog
    from .track.stitch import StitchPolicy

    clock = clock or SystemClock()
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    pm = plugin_manager()
    state = open_state_store(settings.state_url, data_dir, time_zone=settings.time_zone)
    try:
        use_identity_cache(state, settings.identity_cache_entries)
        for schemas in pm.hook.state_schema():
            for name, statements in (schemas or {}).items():
                state.ensure_schema(name, statements)
        with state.transaction() as tx:
            if tx.get_project("default") is None:
                tx.create_project("default", time_zone=settings.time_zone)
        events = open_event_store(
            data_dir, memory_limit=settings.duckdb_memory_limit, threads=settings.duckdb_threads
        )
    except BaseException:
        state.close()
        raise
    token, new = _admin_token(settings)
    rt = Runtime(settings=settings, clock=clock, state=state, events=events, plugins=pm,
                 admin_token=token, new_admin_token=new)
    if ingest:
        log = IngestLog(data_dir / "log", fsync=settings.log_fsync,
                        segment_bytes=settings.log_segment_bytes)
        policy = StitchPolicy.from_settings(settings)

        def deliver(table: pa.Table) -> None:
            pm.hook.on_events(runtime=rt, events=table)

        def deliver_profiles(changed: dict[str, set[int]]) -> None:
            pm.hook.on_profiles(runtime=rt, changed=changed)

        def deliver_stitched(table: pa.Table) -> None:
            pm.hook.on_stitched_events(runtime=rt, events=table)

        def stitched_done(offset: int) -> None:
            # Every on_stitched_events subscriber has returned for the log up to here.
            with state.transaction() as tx:
                tx.set_offset(STITCHED_CURSOR, offset)

        rt.dispatcher = EventDispatcher(deliver, deliver_profiles)
        # Its own thread: journeys do not queue behind audience evaluation.
        rt.stitched_dispatcher = EventDispatcher(deliver_stitched,
                                                 name="touchline-dispatch-stitched",
                                                 on_delivered=stitched_done)
        rt.log = log
        rt.sink = LogSink(log, max_lag=settings.ingest_max_lag_bytes,
                          applied=lambda: rt.pipeline.offset)
        rt.pipeline = IngestPipeline(
            log=log, state=state, events=events, policy=policy, clock=clock,
            batch_events=settings.ingest_batch_events, interval_ms=settings.ingest_interval_ms,
            dedupe_horizon_ms=settings.dedupe_hours * 3600 * 1000,
            on_commit=rt.dispatcher.submit, on_profiles=rt.dispatcher.submit_profiles,
            on_stitched=rt.stitched_dispatcher.submit,
            projects=StateProjects(state), decode_options=DecodeOptions.from_settings(settings),
        )
    return rt
