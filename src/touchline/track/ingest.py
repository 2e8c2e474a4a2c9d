"""The ingest pipeline: from the durable log to the state store and the event store.

Each step reads a batch of log entries past the event store's offset, drops exact
duplicates, stitches identities and applies profile operations in one state-store
transaction, then appends the events (with the replica rows the batch touched) in
one event-store transaction. Both stores record the log offset they reached in the
same transaction as the data, so a crash anywhere replays from the log and lands
each record exactly once: records the state store already applied are only resolved
again (read-only), never applied twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from ..clock import Clock
from ..errors import InvalidInput, StoreError
from ..store.batch import EVENT_SCHEMA, IngestBatch, StateOutcome
from .decode import Decoded, DecodeOptions
from .dedupe import DuplicateFilter, event_key
from .log import IngestLog
from .raw import RawBatch, is_raw_entry
from .records import Record
from .sensors import decode_sensors_raw
from .sink import ProjectDirectory

__all__ = [
    "STITCHED_CURSOR",
    "IngestPipeline", "IngestStats", "LogSink", "changed_profiles", "encode_records",
    "track_events_table",
]

log = logging.getLogger("touchline.ingest")

REMEMBER_ROWS = 100_000  # stored event ids turned into filter keys at a time

RawDecoder = Callable[[RawBatch, ProjectDirectory, DecodeOptions], Decoded]

# The protocols whose collector logs requests undecoded (see raw.py).
RAW_DECODERS: dict[str, RawDecoder] = {"sensors": decode_sensors_raw}


def encode_records(records: Sequence[Record]) -> bytes:
    """The log payload for one accepted request."""
    return orjson.dumps([r.to_dict() for r in records])


class LogSink:
    """The collector's sink: a request's records become durable as one log entry.

    With ``max_lag`` set and ``applied`` telling where the pipeline is, a log that far
    ahead of the pipeline refuses more (StoreError, which collectors answer with 503:
    the SDKs keep the data and retry) rather than fill the disk.
    """

    def __init__(self, log: IngestLog, *, max_lag: int = 0,
                 applied: Callable[[], int] | None = None) -> None:
        self._log = log
        self._max_lag = max_lag
        self._applied = applied

    def _check_lag(self) -> None:
        if self._max_lag and self._applied is not None:
            lag = self._log.end_offset - self._applied()
            if lag > self._max_lag:
                raise StoreError(f"ingest is {lag:,} bytes behind (limit {self._max_lag:,}); "
                                 "retry later")

    async def submit(self, records: Sequence[Record]) -> None:
        if records:
            self._check_lag()
            await self._log.append(encode_records(records))

    async def submit_raw(self, batch: RawBatch) -> None:
        self._check_lag()
        await self._log.append(batch.encode())

    def submit_sync(self, records: Sequence[Record]) -> None:
        if records:
            self._check_lag()
            self._log.append_sync(encode_records(records))


@dataclass
class IngestStats:
    """Counters of the running pipeline and the latest problems, for /api/v1/ingest/status."""

    records: int = 0
    events: int = 0
    duplicates: int = 0
    refused: int = 0  # refused by stitching (for example a link between two login ids)
    rejected: int = 0  # refused by the collector's validation
    batches: int = 0
    last_commit_ms: int = 0
    recent_issues: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))

    def collector_rejected(self, protocol: str, errors: Sequence[InvalidInput]) -> None:
        """The collector's error reporter: bad records show up in the status."""
        self.rejected += len(errors)
        for err in errors[-10:]:
            self.recent_issues.append({"protocol": protocol, **err.as_dict()})

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "events": self.events, "duplicates": self.duplicates,
            "refused": self.refused, "rejected": self.rejected, "batches": self.batches,
            "last_commit_ms": self.last_commit_ms, "recent_issues": list(self.recent_issues),
        }


class IngestPipeline:
    def __init__(
        self,
        *,
        log: IngestLog,
        state: Any,
        events: Any,
        policy: Any,
        clock: Clock,
        batch_events: int = 20_000,
        interval_ms: int = 50,
        dedupe_horizon_ms: int = 48 * 3600 * 1000,
        on_commit: Callable[[pa.Table], None] | None = None,
        on_profiles: Callable[[dict[str, set[int]]], None] | None = None,
        on_stitched: Callable[[pa.Table, int], None] | None = None,
        projects: ProjectDirectory | None = None,
        decode_options: DecodeOptions | None = None,
    ) -> None:
        self._log = log
        self._projects = projects
        self._decode_options = decode_options or DecodeOptions()
        self._state = state
        self._events = events
        self._policy = policy
        self._clock = clock
        self._batch_events = batch_events
        self._interval = interval_ms / 1000
        self._on_commit = on_commit
        self._on_profiles = on_profiles
        self._on_stitched = on_stitched
        # Where the stitched subscribers (journeys) are: the log is kept from there, and
        # a restart hands them again what a crash took from them (see _replay_stitched).
        self._replay_from: int | None = None
        self._dedupe = DuplicateFilter(dedupe_horizon_ms)
        self._horizon_ms = dedupe_horizon_ms
        self._pruned_ms = 0
        self._offset: int = int(events.get_offset("ingest"))
        if on_stitched is not None:
            self._replay_from = self._init_stitched_cursor()
        self.stats = IngestStats()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._step_lock = threading.Lock()
        self._failure: BaseException | None = None
        self.remember_since(self._clock.now_ms() - dedupe_horizon_ms)

    def remember_since(self, since_ms: int) -> None:
        """Add to the duplicate filter the ids the stores received since ``since_ms``:
        at start, the dedupe horizon; after an import, what it loaded."""
        table = self._events.recent_event_ids(since_ms)
        # A slice at a time: ten million ids as Python strings at once would cost
        # some 2 GB at start-up or after a big import.
        for batch in table.to_batches(max_chunksize=REMEMBER_ROWS):
            projects = batch.column("project").to_pylist()
            ids = batch.column("event_id").to_pylist()
            self._dedupe.add_known(
                (event_key(p, i) for p, i in zip(projects, ids, strict=True)), self._clock.now_ms()
            )
        with self._state.transaction(read_only=True) as tx:
            others = tx.recent_records(since_ms)
        if others:
            self._dedupe.add_known((event_key(p, i) for p, i in others), self._clock.now_ms())

    @property
    def offset(self) -> int:
        return self._offset

    # -- running ------------------------------------------------------------------

    def _release_floor(self, end_offset: int) -> int:
        """How much of the log may go: what every store and the stitched subscribers
        are done with."""
        if self._on_stitched is None:
            return end_offset
        with self._state.transaction(read_only=True) as tx:
            cursor = tx.find_offset(STITCHED_CURSOR)
        return end_offset if cursor is None else min(end_offset, cursor)

    def _init_stitched_cursor(self) -> int | None:
        with self._state.transaction() as tx:
            cursor = tx.find_offset(STITCHED_CURSOR)
            if cursor is None:  # a new data directory, or one from before the cursor
                tx.set_offset(STITCHED_CURSOR, self._offset)
                return None
        return cursor if cursor < self._offset else None

    def _replay_stitched(self, start: int) -> None:
        """Hand the stitched subscribers the batches they had not finished when the
        process stopped: from their cursor to where the stores are. The records were
        applied already, so they are only resolved again (read-only)."""
        from .stitch import resolve_records

        assert self._on_stitched is not None
        count = 0
        while start < self._offset:
            entries = self._read_entries(start, self._offset)
            if not entries:
                break
            end = entries[-1][0]
            records = [r for _, recs in entries for r in recs]
            with self._state.transaction(read_only=True) as tx:
                outcome = resolve_records(tx, records, self._policy)
            events = track_events_table(records, outcome.profile_ids)
            self._on_stitched(with_user_id(events), end)
            count += events.num_rows
            start = end
        log.info("handed %d events again to the stitched subscribers after a restart", count)

    def _records_of(self, payload: bytes, *, report: bool) -> list[Record]:
        """The records of one log entry; a raw entry is validated here, and its
        refused records reported (once: not again when replayed)."""
        if not is_raw_entry(payload):
            return [Record.from_dict(d) for d in orjson.loads(payload)]
        batch = RawBatch.decode(payload)
        decoder = RAW_DECODERS.get(batch.protocol)
        if decoder is None or self._projects is None:
            raise InvalidInput("log entry", f"no decoder for raw {batch.protocol!r} batches")
        try:
            decoded = decoder(batch, self._projects, self._decode_options)
        except InvalidInput as exc:  # the batch as a whole: not gzip, not JSON
            decoded = Decoded(errors=[exc])
        except Exception as exc:
            # As in the collector: whatever escaped a decoder came from the input.
            # Refuse the entry rather than retry it forever.
            log.exception("%s: decoder failed on a logged batch", batch.protocol)
            decoded = Decoded(errors=[InvalidInput(
                "body", f"could not be decoded ({type(exc).__name__})")])
        if report and decoded.errors:
            log.info("%s: %d record(s) refused, first: %s", batch.protocol,
                     len(decoded.errors), decoded.errors[0])
            self.stats.collector_rejected(batch.protocol, decoded.errors)
        return decoded.records

    def _read_entries(self, start: int, stop: int) -> list[tuple[int, list[Record]]]:
        entries: list[tuple[int, list[Record]]] = []
        count = 0
        for end, payload in self._log.read(start):
            if end > stop:
                break
            recs = self._records_of(payload, report=False)
            entries.append((end, recs))
            count += len(recs)
            if count >= self._batch_events or end == stop:
                break
        return entries

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="touchline-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Apply everything that is durable in the log, then stop the thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.drain()

    def _run(self) -> None:
        if self._replay_from is not None:
            start, self._replay_from = self._replay_from, None
            try:
                with self._step_lock:
                    self._replay_stitched(start)
            except Exception:
                log.exception("handing unfinished batches to the stitched subscribers failed")
        while not self._stopping.is_set():
            try:
                if self.step() == 0:
                    self._log.wait_for(self._offset, self._interval)
            except Exception as exc:  # keep serving; the batch is retried from the log
                self._failure = exc
                log.exception("ingest batch failed; retrying")
                self._stopping.wait(1.0)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the pipeline between two batches while something else writes the stores
        (an import through the API). Collectors keep acknowledging into the log meanwhile;
        the pipeline catches up afterwards."""
        with self._step_lock:
            yield

    def drain(self, timeout: float | None = None) -> None:
        """Apply every durable entry (for the demo, imports and tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._offset < self._log.end_offset:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("ingest did not catch up with the log in time")
            if self.step() == 0 and self._thread is not None:
                time.sleep(0.01)

    # -- one batch ----------------------------------------------------------------

    def step(self) -> int:
        """Move one batch from the log to the stores; returns the log entries read."""
        with self._step_lock:
            return self._step()

    def _step(self) -> int:
        start = self._offset
        entries: list[tuple[int, list[Record]]] = []
        count = 0
        for end, payload in self._log.read(start):
            recs = self._records_of(payload, report=True)
            entries.append((end, recs))
            count += len(recs)
            if count >= self._batch_events:
                break
        if not entries:
            return 0
        end_offset = entries[-1][0]

        records: list[Record] = []
        record_ends: list[int] = []
        for end, recs in entries:
            records.extend(recs)
            record_ends.extend([end] * len(recs))

        fresh = self._dedupe.filter(
            [event_key(r.project, r.event_id) for r in records], [r.received_ms for r in records]
        )
        kept = [i for i, ok in enumerate(fresh) if ok]
        self.stats.duplicates += len(records) - len(kept)
        records = [records[i] for i in kept]
        record_ends = [record_ends[i] for i in kept]

        outcome = self._apply_state(records, record_ends, end_offset)
        events = track_events_table(records, outcome.profile_ids)
        if self._on_stitched is not None:
            # The event store's commit (tens of milliseconds) need not delay those who
            # only act on the events. An empty batch goes too: it moves their cursor.
            try:
                self._on_stitched(with_user_id(events), end_offset)
            except Exception:
                log.exception("on_stitched subscriber failed")
        self._events.commit_batch(IngestBatch(
            events=events, offset=end_offset, profiles=outcome.profiles,
            identities=outcome.identities, items=outcome.items, user_map=outcome.user_map,
        ))
        self._offset = end_offset
        self._log.release(self._release_floor(end_offset))
        self._dedupe.expire(self._clock.now_ms())

        self.stats.records += len(records)
        self.stats.events += events.num_rows
        self.stats.batches += 1
        self.stats.last_commit_ms = self._clock.now_ms()
        for index, err in outcome.errors:
            self.stats.refused += 1
            r = records[index]
            self.stats.recent_issues.append(
                {"project": r.project, "event_id": r.event_id, **err.as_dict()}
            )
        if self._on_commit is not None and events.num_rows:
            try:
                self._on_commit(with_user_id(events))
            except Exception:  # a failing subscriber must not stop ingestion
                log.exception("on_commit subscriber failed")
        if self._on_profiles is not None:
            changed = changed_profiles(records, outcome)
            if changed:
                try:
                    self._on_profiles(changed)
                except Exception:
                    log.exception("on_profiles subscriber failed")
        return len(entries)

    def _apply_state(self, records: list[Record], ends: list[int], end_offset: int) -> StateOutcome:
        from .stitch import apply_records, resolve_records

        with self._state.transaction() as tx:
            applied = tx.get_offset("ingest")
            split = 0
            while split < len(records) and ends[split] <= applied:
                split += 1
            parts: list[StateOutcome] = []
            if split:
                parts.append(resolve_records(tx, records[:split]))
            if split < len(records):
                parts.append(apply_records(tx, records[split:], self._policy))
                tx.remember_records([(r.project, r.event_id, r.received_ms)
                                     for r in records[split:] if r.kind != "track"])
            now = self._clock.now_ms()
            if now - self._pruned_ms > 600_000:  # every ten minutes is plenty
                tx.forget_records(now - self._horizon_ms)
                self._pruned_ms = now
            if applied < end_offset:
                tx.set_offset("ingest", end_offset)
        return _merge_outcomes(parts, split)


STITCHED_CURSOR = "stitched"
"""The state-store offset of the log position the stitched subscribers have finished."""


def with_user_id(events: pa.Table) -> pa.Table:
    """Events as subscribers see them: the stitched profile id also as ``user_id``."""
    return events.append_column("user_id", events.column("profile_id"))


def changed_profiles(records: Sequence[Record], outcome: StateOutcome) -> dict[str, set[int]]:
    """Per project, the profiles a batch changed other than by events: profile
    operations, identity links and unlinks, and the survivors of merges."""
    out: dict[str, set[int]] = {}
    for r, pid in zip(records, outcome.profile_ids, strict=True):
        if pid is not None and r.kind in ("profile", "link", "unlink"):
            out.setdefault(r.project, set()).add(pid)
    for (project, _merged), survivor in outcome.user_map.items():
        out.setdefault(project, set()).add(survivor)
    return out


def track_events_table(records: Sequence[Record], profile_ids: Sequence[int | None]) -> pa.Table:
    """The stored events of a batch: its track records that resolved to a profile."""
    cols: dict[str, list[Any]] = {name: [] for name in EVENT_SCHEMA.names}
    for r, pid in zip(records, profile_ids, strict=True):
        if r.kind != "track" or pid is None:
            continue
        cols["project"].append(r.project)
        cols["event_id"].append(r.event_id)
        cols["event"].append(r.event)
        cols["profile_id"].append(pid)
        cols["distinct_id"].append(r.distinct_id)
        cols["time"].append(r.time_ms)
        cols["received_at"].append(r.received_ms)
        cols["source"].append(r.source)
        cols["properties"].append(orjson.dumps(r.properties).decode())
    return pa.Table.from_pydict(cols, schema=EVENT_SCHEMA)


def _merge_outcomes(parts: list[StateOutcome], first_len: int) -> StateOutcome:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return StateOutcome(profile_ids=[])
    first, second = parts
    errors: list[tuple[int, InvalidInput]] = list(first.errors)
    errors.extend((i + first_len, e) for i, e in second.errors)
    user_map = dict(first.user_map)
    user_map.update(second.user_map)
    # Later rows win: the second part ran after the first.
    profiles = {(p.project, p.user_id): p for p in [*first.profiles, *second.profiles]}
    identities = {(i.project, i.id_type, i.id_value): i for i in [*first.identities, *second.identities]}
    items = {(i.project, i.item_type, i.item_id): i for i in [*first.items, *second.items]}
    return StateOutcome(
        profile_ids=[*first.profile_ids, *second.profile_ids], errors=errors, user_map=user_map,
        profiles=list(profiles.values()), identities=list(identities.values()),
        items=list(items.values()),
    )
