"""Decoding collector requests in worker processes.

Decoding a batch (base64, gzip, JSON, per-record validation, the content hash that
de-duplicates Sensors resends) costs tens of microseconds an event in Python. In the
server process that CPU competes, under one interpreter lock, with the ingest
thread that applies the log to the stores, so the acknowledged rate was bounded by
both together. A pool of worker processes decodes the bigger bodies instead and
hands back the ingest log's payload already encoded: the server process only reads
the body, appends the bytes to the log and answers.

The workers see the project directory as a snapshot taken by the server process. A
lookup the snapshot cannot answer (a project created a moment ago, a wrong write
key) is reported back and the request is decoded again in the server process
against the live directory, so a stale snapshot never refuses good records.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from .decode import CollectRequest, Decoded
from .records import encode_records
from .sink import Project

__all__ = ["DecodePool", "Encoded", "SnapshotProjects"]


@dataclass(frozen=True, slots=True)
class Encoded:
    """A decoded request as the server process needs it: log bytes, not records."""

    payload: bytes  # encode_records() of the good records; empty when nothing to store
    count: int
    errors: list[InvalidInput] = field(default_factory=list)
    dry_run: bool = False
    missed_lookup: bool = False  # the snapshot lacked a project: decode again in-process

    def error_dicts(self) -> list[dict[str, object]]:
        return [e.as_dict() for e in self.errors]


class SnapshotProjects:
    """A fixed copy of the project directory that remembers whether a lookup missed."""

    def __init__(self, projects: Sequence[Project]) -> None:
        self._by_name = {p.name: p for p in projects}
        self._by_key = {p.write_key: p for p in projects}
        self.missed = False

    def by_name(self, name: str) -> Project | None:
        found = self._by_name.get(name)
        self.missed |= found is None
        return found

    def by_write_key(self, key: str) -> Project | None:
        found = self._by_key.get(key)
        self.missed |= found is None
        return found


Decoders = Callable[[Any], dict[str, Callable[..., Decoded]]]
"""Makes the decoder of each protocol from the collector's options (module-level, so
that it pickles by name)."""

# Each worker's decoders by the options they were made from.
_decoders: dict[Any, dict[str, Callable[..., Decoded]]] = {}


def _init_worker() -> None:
    parent = multiprocessing.parent_process()
    if parent is not None:
        # A server killed with SIGKILL cannot shut its pool down: leave with it.
        def watch() -> None:
            parent.join()
            os._exit(0)

        threading.Thread(target=watch, name="touchline-decode-parent", daemon=True).start()


def _decode(make: Decoders, options: Any, protocol: str, req: CollectRequest,
            projects: tuple[Project, ...], now_ms: int, extra_junk: frozenset[str]) -> Encoded:
    decoders = _decoders.get(options)
    if decoders is None:
        decoders = _decoders[options] = make(options)
    directory = SnapshotProjects(projects)
    try:
        decoded = decoders[protocol](req, directory, now_ms, extra_junk=extra_junk)
    except Exception:
        if directory.missed:  # maybe only because the snapshot is stale
            return Encoded(b"", 0, missed_lookup=True)
        raise
    if directory.missed:
        return Encoded(b"", 0, missed_lookup=True)
    store = decoded.records and not decoded.dry_run
    return Encoded(encode_records(decoded.records) if store else b"", len(decoded.records),
                   decoded.errors, decoded.dry_run)


def _ready() -> int:
    return os.getpid()


class DecodePool:
    """``processes`` worker processes that decode requests into log payloads."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise InvalidInput("decode_processes", "must be >= 1 to start a pool")
        self.processes = processes
        self._executor = ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker)

    def warm_up(self) -> list[int]:
        """Start every worker now rather than on the first request; their pids."""
        return [f.result() for f in [self._executor.submit(_ready)
                                      for _ in range(self.processes)]]

    async def decode(self, make: Decoders, options: Any, protocol: str, req: CollectRequest,
                     projects: tuple[Project, ...], now_ms: int,
                     extra_junk: frozenset[str]) -> Encoded:
        """Decode with ``make(options)[protocol]``; ``options`` must be hashable."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, _decode, make, options, protocol, req, projects, now_ms, extra_junk)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
