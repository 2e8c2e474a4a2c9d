"""The journey engine: entries, node steps, waits, exits and goals, in batches.

Every change happens inside one state-store transaction: the user's journey state,
its timeline rows, goal rows and the outbox rows of the messages the step produced
commit together or not at all. That is what makes delivery effectively once: a
message exists iff the step that made it committed, and its id is deterministic.

Three things move users:

- events (:meth:`Engine.handle_events`): entries, exits from anywhere, goals, and
  waits that match. Segment enter/exit signals arrive as the pseudo-events
  ``$segment_enter:<segment>`` / ``$segment_exit:<segment>``.
- timers (:meth:`Engine.run_due`): rows of the ``due_ms`` index whose time has come
  are claimed in batches (``FOR UPDATE SKIP LOCKED`` where the backend has it, so
  several workers share the work and never hold the same user).
- calls (:meth:`Engine.enter_api`, :meth:`Engine.enter_users`, schedules).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import xxhash

from ..clock import Clock
from ..errors import InvalidInput, NotFound
from . import scheduler
from .bandit import StateBanditStore, ThompsonBandit
from .content import decide_for_entry, variant_parts
from .model import (
    ApiEntry,
    ConditionNode,
    DelayNode,
    EventEntry,
    EventMatch,
    ExitNode,
    ExperimentNode,
    Journey,
    JumpNode,
    MessageNode,
    RandomNode,
    UpdateProfileNode,
    Variant,
    WaitNode,
    WebhookNode,
    predicate_holds,
    where_holds,
)
from .storage import (
    STATE_COLUMNS,
    Book,
    State,
    Tx,
    Writes,
    entry_event,
    segment_event,
    wait_name,
    watched_events,
)

__all__ = [
    "ARRIVE",
    "Engine",
    "JourneyEvent",
    "ProfileSource",
    "State",
    "entry_event",
    "message_id",
    "segment_event",
    "stable_fraction",
    "watched_events",
]

ARRIVE = "$arrive"
"""``wait_event`` of a row that must be stepped into its node at ``due_ms`` (bulk
entries, migrations): the claim loop does the work, not the caller."""

ProfileSource = Callable[[Tx, str, Sequence[int]], dict[int, dict[str, Any]]]
"""(tx, project, user ids) -> {user id: profile properties}."""

_MAX_HOPS = 256
_CHUNK = 500


def message_id(journey_id: str, version: int, user_id: int, node: str, entry_key: str,
               visit: int = 1) -> str:
    """The deterministic id of a message: the provider's idempotency key."""
    raw = f"{journey_id}\x1f{version}\x1f{user_id}\x1f{node}\x1f{entry_key}"
    if visit > 1:  # a loop back through the same node is a new message
        raw += f"\x1f{visit}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``: the same user gets the same branch."""
    h = xxhash.xxh64_intdigest("\x1f".join(str(p) for p in parts).encode())
    return h / 2**64


def _pick(arms: Sequence[Variant], fraction: float) -> Variant:
    total = sum(a.weight for a in arms)
    acc = 0.0
    for arm in arms:
        acc += arm.weight / total
        if fraction < acc:
            return arm
    return arms[-1]


@dataclass(frozen=True, slots=True)
class JourneyEvent:
    """One committed event as the engine sees it (stitched user id, ms time)."""

    project: str
    user_id: int
    event: str
    time_ms: int
    properties: dict[str, Any] = field(default_factory=dict)
    event_id: str = ""


class _Profiles:
    """Profiles fetched once per batch, only for users whose step needs one."""

    def __init__(self, source: ProfileSource | None, tx: Tx) -> None:
        self.source = source
        self.tx = tx
        self.cache: dict[tuple[str, int], dict[str, Any]] = {}

    def prefetch(self, project: str, user_ids: Iterable[int]) -> None:
        if self.source is None:
            return
        missing = sorted({u for u in user_ids if (project, u) not in self.cache})
        for i in range(0, len(missing), _CHUNK):
            chunk = missing[i:i + _CHUNK]
            found = self.source(self.tx, project, chunk)
            for u in chunk:
                self.cache[(project, u)] = found.get(u) or {}

    def get(self, project: str, user_id: int) -> dict[str, Any]:
        if (project, user_id) not in self.cache:
            self.prefetch(project, [user_id])
        return self.cache.get((project, user_id), {})


# id -> (the definition, answer); holding the definition keeps its id from being reused.
_NEEDS_PROFILE: dict[int, tuple[Journey, bool]] = {}


def _needs_profile(j: Journey) -> bool:
    """Whether stepping ``j`` reads profiles (cached: definitions are immutable)."""
    known = _NEEDS_PROFILE.get(id(j))
    if known is None or known[0] is not j:
        known = _NEEDS_PROFILE[id(j)] = (j, _reads_profile(j))
    return known[1]


def _reads_profile(j: Journey) -> bool:
    for node in j.nodes.values():
        if isinstance(node, ConditionNode) and any(
                k.startswith("profile.") for b in node.branches for k in b.when):
            return True
        if isinstance(node, DelayNode) and (node.until_property is not None or (
                node.until_time is not None and node.until_time.time_zone == "user")):
            return True
        if isinstance(node, MessageNode):
            return True
    return False


class Engine:
    """Moves users through journeys. Thread-safe as long as each call has its own
    transaction, which every public method opens itself."""

    def __init__(
        self,
        store: Any,
        clock: Clock,
        *,
        profiles: ProfileSource | None = None,
        default_zone: str = "Asia/Shanghai",
        on_profile_update: Callable[[str, int, dict[str, Any]], None] | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        # Content bandits read their arm counts in the step's own transaction (the
        # store's transactions nest); ``rng`` fixes the draws for tests.
        self.bandit = ThompsonBandit(StateBanditStore(store), rng=rng)
        self.profiles = profiles
        self.default_zone = default_zone
        self.on_profile_update = on_profile_update
        self.book = Book()
        # Claims skip rows another worker holds (PostgreSQL); where the backend
        # serializes writers itself (SQLite) both suffixes are empty. Dialect data.
        self._claim_lock: str = store.dialect.skip_locked
        self._row_lock: str = store.dialect.for_update

    # -- reading -------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget cached definitions (after an apply from this process)."""
        self.book.loaded = -1e9

    def _states_of(self, tx: Tx, project: str, users: Sequence[int]
                   ) -> dict[int, list[State]]:
        out: dict[int, list[State]] = {}
        uniq = sorted(set(users))
        for i in range(0, len(uniq), _CHUNK):
            chunk = uniq[i:i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = tx.fetchall(
                f"SELECT {STATE_COLUMNS} FROM journey_states WHERE project = ? AND user_id IN "
                f"({marks}) ORDER BY entered_ms{self._row_lock}", [project, *chunk])
            for r in rows:
                st = State.from_row(r)
                out.setdefault(st.user_id, []).append(st)
        return out

    # -- entering ------------------------------------------------------------------

    def _may_enter(self, tx: Tx, j: Journey, version: int, existing: list[State],
                   entry_key: str, now: int) -> str | None:
        """None when the user may enter, else the rule that refuses it."""
        mine = [s for s in existing if s.journey_id == j.id]
        if any(s.entry_key == entry_key for s in mine):
            return "duplicate entry"  # a replayed event or signal
        mode = j.re_entry.mode
        if mode == "never" and mine:
            return "re_entry never"
        if any(s.status == "active" for s in mine):
            return "already in journey"
        if mode == "cooldown" and j.re_entry.cooldown is not None:
            from .model import parse_duration
            window = parse_duration(j.re_entry.cooldown)
            if any(s.updated_ms > now - window for s in mine):
                return "cooldown"
        cap = j.entry_cap
        if cap.per_user is not None and len(mine) >= cap.per_user:
            return "entry_cap.per_user"
        if cap.total is not None:
            row = tx.fetchone(
                "SELECT COUNT(*) FROM journey_states WHERE project = ? AND journey_id = ? "
                "AND version = ?", (j.project, j.id, version))
            if int(row[0]) >= cap.total:
                return "entry_cap.total"
        return None

    def _new_state(self, w: Writes, j: Journey, version: int, user_id: int,
                   entry_key: str, now: int, event: dict[str, Any],
                   key_value: str | None) -> State:
        data: dict[str, Any] = {"event": event}
        if key_value is not None:
            data["key"] = key_value
        st = State(j.project, j.id, user_id, entry_key, version, j.start, "active", None,
                   None, data, now, now, None, new=True)
        w.touch(st)
        w.log(st, None, "enter", {"event": event.get("$event")} if event else None, now)
        w.transitions += 1
        return st

    # -- stepping ------------------------------------------------------------------

    def _finish(self, w: Writes, st: State, reason: str, now: int,
                counted: bool = False) -> None:
        """End the entry; leaving counts as a transition unless the exit node was one."""
        st.status = "done"
        st.due_ms = None
        st.wait_event = None
        st.exit_reason = reason
        st.updated_ms = now
        w.touch(st)
        w.log(st, st.node, "exit", {"reason": reason}, now)
        if not counted:
            w.transitions += 1

    def _condition(self, tx: Tx, node: ConditionNode, st: State, prof: _Profiles) -> str:
        for i, branch in enumerate(node.branches):
            if all(self._holds(tx, key, exp, st, prof) for key, exp in branch.when.items()):
                return branch.name or f"branch {i}"
        return "default"

    def _holds(self, tx: Tx, key: str, expected: Any, st: State, prof: _Profiles) -> bool:
        if key in ("in_segment", "not_in_segment"):
            row = tx.fetchone(
                "SELECT 1 FROM segment_members WHERE project = ? AND segment = ? "
                "AND user_id = ?", (st.project, str(expected), st.user_id))
            return (row is not None) == (key == "in_segment")
        root, _, name = key.partition(".")
        if root == "profile":
            source: dict[str, Any] = prof.get(st.project, st.user_id)
        elif root == "event":
            source = st.data.get("event") or {}
        else:
            source = st.data
        return predicate_holds(expected, source.get(name))

    def _member_of(self, tx: Tx, st: State, segments: Sequence[str]) -> set[str]:
        marks = ",".join("?" * len(segments))
        return {str(r[0]) for r in tx.fetchall(
            "SELECT segment FROM segment_members WHERE project = ? AND user_id = ? AND "
            f"segment IN ({marks})", [st.project, st.user_id, *segments])}

    def _message(self, tx: Tx, w: Writes, j: Journey, st: State, nid: str,
                 node: MessageNode | WebhookNode, now: int) -> None:
        visits = st.data.setdefault("visits", {})
        visits[nid] = visit = int(visits.get(nid, 0)) + 1
        mid = message_id(j.id, st.version, st.user_id, nid, st.entry_key, visit)
        event = st.data.get("event") or {}
        context = {"event": event, "journey": {k: v for k, v in st.data.items()
                                               if k not in ("event", "visits", "variants")}}
        variant: dict[str, Any] | None = None
        why = ""
        if isinstance(node, WebhookNode):
            channel = "webhook"
            payload: dict[str, Any] = {"to": node.url, "body_json": node.body,
                                       "quiet_hours": "ignore"}
            priority = 5
            category = "transactional"
            content_key = f"{j.id}/{nid}"
        else:
            channel = node.channel
            if channel.startswith("event."):
                channel = str(event.get(channel[6:]) or node.fallback_channel or "")
            payload = node.model_dump(exclude={"type", "next", "channel", "variants",
                                               "decision"}, exclude_none=True)
            priority = node.priority
            category = node.category
            # The node's, not the variant's: variants of one message are the same
            # content for cross-channel de-duplication.
            content_key = str(node.content.get("key") or node.template_id or f"{j.id}/{nid}")
            if not channel:
                w.log(st, nid, "skipped", {"reason": "no channel for this user"}, now)
                return
            if node.variants:
                variant, why = decide_for_entry(
                    node, nid, j, user_id=st.user_id, bandit=self.bandit,
                    chosen=st.data.setdefault("variants", {}),
                    member_of=lambda names: self._member_of(tx, st, names))
                variant["message"] = mid
                payload.update(variant_parts(node, variant["id"]))
                payload["variant"] = {k: variant[k] for k in ("id", "strategy", "bandit")
                                      if k in variant}
        payload["context"] = context
        payload["journey"] = {"id": j.id, "version": st.version, "node": nid}
        detail: dict[str, Any] = {"message_id": mid, "channel": channel}
        if variant is not None:
            payload["journey"]["variant"] = variant["id"]
            detail.update(variant=variant["id"], strategy=variant["strategy"], reason=why)
        w.outbox.append((mid, st.project, j.id, st.version, st.user_id, st.entry_key, nid,
                         channel, category, content_key, orjson.dumps(payload).decode(),
                         priority, now, now, now, None if variant is None else variant["id"]))
        st.data["last_message"] = nid
        w.log(st, nid, "message", detail, now)

    def _run(self, tx: Tx, w: Writes, j: Journey, st: State, now: int,
             prof: _Profiles) -> None:
        """Step ``st`` from the node it has just arrived at until it waits or exits."""
        st.due_ms = None
        st.wait_event = None
        st.updated_ms = now
        w.touch(st)
        for _ in range(_MAX_HOPS):
            nid = st.node
            node = j.nodes[nid]
            w.transitions += 1
            nxt: str | None
            if isinstance(node, DelayNode):
                due = scheduler.delay_due_ms(node, now, prof.get(st.project, st.user_id)
                                             if _needs_profile(j) else None,
                                             st.data.get("event"), self.default_zone)
                if due is None:
                    w.log(st, nid, "node", {"missing": "date property"}, now)
                    self._finish(w, st, "missing date property", now)
                    return
                if due > now:
                    st.due_ms = due
                    w.log(st, nid, "wait", {"until": due}, now)
                    return
                nxt = node.next
            elif isinstance(node, WaitNode):
                st.due_ms = scheduler.wait_due_ms(node, now)
                st.wait_event = wait_name(node)
                w.log(st, nid, "wait", {"for": st.wait_event, "until": st.due_ms}, now)
                return
            elif isinstance(node, ConditionNode):
                branch = self._condition(tx, node, st, prof)
                w.log(st, nid, "node", {"branch": branch}, now)
                nxt = next((b.next for i, b in enumerate(node.branches)
                            if (b.name or f"branch {i}") == branch), node.default)
            elif isinstance(node, RandomNode | ExperimentNode):
                if isinstance(node, RandomNode):
                    arms: list[Variant] = list(node.branches)
                    frac = stable_fraction(st.user_id, j.id, nid)
                else:
                    arms = [*node.variants, node.control]
                    frac = stable_fraction(st.user_id, j.id, node.experiment)
                arm = _pick(arms, frac)
                st.data.setdefault("arms", {})[nid] = arm.name
                w.log(st, nid, "node", {"branch": arm.name}, now)
                nxt = arm.next
            elif isinstance(node, MessageNode | WebhookNode):
                self._message(tx, w, j, st, nid, node, now)
                nxt = node.next
            elif isinstance(node, UpdateProfileNode):
                w.profile_updates.append((st.project, st.user_id, dict(node.set)))
                w.log(st, nid, "node", {"set": node.set}, now)
                nxt = node.next
            elif isinstance(node, JumpNode):
                w.log(st, nid, "node", {"to": node.to}, now)
                nxt = node.to
            else:
                assert isinstance(node, ExitNode)
                self._finish(w, st, node.reason, now, counted=True)
                return
            if nxt is None:
                self._finish(w, st, "completed", now)
                return
            st.node = nxt
        self._finish(w, st, "too many steps without a wait", now)

    # -- events --------------------------------------------------------------------

    def _event_matches(self, m: EventMatch, j: Journey, st: State, e: JourneyEvent) -> bool:
        if e.event != m.event or not where_holds(m.where, e.properties):
            return False
        if m.match_correlation:
            prop = getattr(j.entry, "correlation_key", None)
            return prop is not None and str(e.properties.get(prop)) == st.data.get("key")
        return True

    def _on_event(self, tx: Tx, w: Writes, st: State, e: JourneyEvent, now: int,
                  prof: _Profiles) -> None:
        j = self.book.get(st.project, st.journey_id, st.version)
        if e.event_id and e.event_id == st.data.get("entry_event_id"):
            return
        done_goals: list[str] = st.data.setdefault("goals", [])
        from .model import parse_duration
        for g in j.goals:
            if g.name in done_goals or not self._event_matches(g.event, j, st, e):
                continue
            # The window opens at the entry event's own time when there is one.
            opened = int((st.data.get("event") or {}).get("$time") or st.entered_ms)
            if not 0 <= e.time_ms - opened <= parse_duration(g.window):
                continue
            done_goals.append(g.name)
            w.goals.append((st.project, st.journey_id, st.user_id, st.entry_key, g.name,
                            st.version, st.node, st.data.get("last_message"), e.time_ms))
            w.log(st, st.node, "goal", {"goal": g.name}, now)
            w.touch(st)
            for rec in (st.data.get("variants") or {}).values():
                if rec.get("bandit") and rec.get("goal") == g.name and rec.get("message"):
                    w.bandit_conversions.append((rec["bandit"], rec["id"], rec["message"]))
        if st.status != "active" or not self.book.active(st.project, st.journey_id):
            return
        for c in j.exit_when:
            hit = (c.event is not None and self._event_matches(c.event, j, st, e)) or (
                c.leave_segment is not None
                and e.event == segment_event(c.leave_segment, "exit"))
            if hit:
                self._finish(w, st, c.reason or f"exit on {e.event}", now)
                return
        node = j.nodes.get(st.node)
        if isinstance(node, WaitNode) and st.wait_event == e.event and st.due_ms is not None:
            if node.event is not None and not self._event_matches(node.event, j, st, e):
                return
            w.log(st, st.node, "event", {"event": e.event}, now)
            if node.next is None:
                self._finish(w, st, "completed", now)
                return
            st.node = node.next
            self._run(tx, w, j, st, now, prof)

    def watched_event_names(self) -> set[str]:
        """Every event name some live journey enters on or waits for (any project)."""
        with self.store.transaction(read_only=True) as tx:
            self.book.refresh(tx)
        names = {name for per_project in self.book.watched.values() for name in per_project}
        names.update(event for _, event in self.book.entries)
        return names

    def handle_events(self, events: Sequence[JourneyEvent]) -> int:
        """Apply a batch of committed events; returns the node transitions made."""
        if not events:
            return 0
        # Most ingest batches touch no journey: decide that without taking the
        # write lock (a read-only transaction refreshes the cached definitions).
        with self.store.transaction(read_only=True) as tx:
            self.book.refresh(tx)
        if not any(e.event in self.book.watched.get(e.project, ())
                   or (e.project, e.event) in self.book.entries for e in events):
            return 0
        now = self.clock.now_ms()
        with self.store.transaction() as tx:
            self.book.refresh(tx)
            users: dict[str, set[int]] = {}
            for e in events:
                if e.event in self.book.watched.get(e.project, ()) or (
                        (e.project, e.event) in self.book.entries):
                    users.setdefault(e.project, set()).add(e.user_id)
            if not users:
                return 0
            w = Writes()
            prof = _Profiles(self.profiles, tx)
            states: dict[tuple[str, int], list[State]] = {}
            for project, ids in users.items():
                for uid, rows in self._states_of(tx, project, list(ids)).items():
                    states[(project, uid)] = rows
                if self.profiles is not None:
                    prof.prefetch(project, ids)
            for e in sorted(events, key=lambda x: x.time_ms):
                mine = states.setdefault((e.project, e.user_id), [])
                for st in list(mine):
                    self._on_event(tx, w, st, e, now, prof)
                for j in self.book.entries.get((e.project, e.event), ()):
                    self._enter_from_event(tx, w, j, e, mine, now, prof)
            w.flush(tx)
        self._after(w)
        return w.transitions

    def _enter_from_event(self, tx: Tx, w: Writes, j: Journey, e: JourneyEvent,
                          mine: list[State], now: int, prof: _Profiles) -> None:
        key_value: str | None = None
        if isinstance(j.entry, EventEntry):
            if not where_holds(j.entry.where, e.properties):
                return
            if j.entry.correlation_key is not None:
                raw = e.properties.get(j.entry.correlation_key)
                key_value = None if raw is None else str(raw)
        entry_key = f"k:{key_value}" if key_value is not None else f"e:{e.event_id or e.time_ms}"
        version = self.book.current[(j.project, j.id)][0]
        if self._may_enter(tx, j, version, mine, entry_key, now) is not None:
            return
        event = {**e.properties, "$event": e.event, "$time": e.time_ms}
        st = self._new_state(w, j, version, e.user_id, entry_key, now, event, key_value)
        if e.event_id:
            st.data["entry_event_id"] = e.event_id
        mine.append(st)
        self._run(tx, w, j, st, now, prof)

    def _after(self, w: Writes) -> None:
        if self.on_profile_update is not None:
            for project, user_id, props in w.profile_updates:
                self.on_profile_update(project, user_id, props)

    # -- timers --------------------------------------------------------------------

    def run_due(self, limit: int = 2000) -> int:
        """Claim up to ``limit`` due timers and step them; returns the transitions."""
        now = self.clock.now_ms()
        # Look before taking the write lock: an idle poll must not queue behind (or
        # hold up) the other writers of an embedded store.
        due = self.next_due_ms()
        if due is None or due > now:
            return 0
        with self.store.transaction() as tx:
            self.book.refresh(tx)
            rows = tx.fetchall(
                f"SELECT {STATE_COLUMNS} FROM journey_states s WHERE due_ms IS NOT NULL "
                "AND due_ms <= ? AND NOT EXISTS (SELECT 1 FROM journeys j WHERE "
                "j.project = s.project AND j.journey_id = s.journey_id AND j.status <> "
                f"'active') ORDER BY due_ms LIMIT ?{self._claim_lock}", (now, limit))
            if not rows:
                return 0
            w = Writes()
            prof = _Profiles(self.profiles, tx)
            claimed = [State.from_row(r) for r in rows]
            by_project: dict[str, list[int]] = {}
            for st in claimed:
                if _needs_profile(self.book.get(st.project, st.journey_id, st.version)):
                    by_project.setdefault(st.project, []).append(st.user_id)
            for project, ids in by_project.items():
                prof.prefetch(project, ids)
            for st in claimed:
                self._fire(tx, w, st, now, prof)
            w.flush(tx)
        self._after(w)
        return w.transitions

    def _fire(self, tx: Tx, w: Writes, st: State, now: int, prof: _Profiles) -> None:
        j = self.book.get(st.project, st.journey_id, st.version)
        node = j.nodes[st.node]
        if st.wait_event == ARRIVE:
            if st.status == "active" and "entered" not in st.data:
                st.data["entered"] = True
            self._run(tx, w, j, st, now, prof)
            return
        nxt: str | None
        if isinstance(node, WaitNode):
            w.log(st, st.node, "timeout", None, now)
            nxt = node.on_timeout
        elif isinstance(node, DelayNode):
            nxt = node.next
        else:  # pragma: no cover - a timer is only ever set on a delay or a wait
            nxt = st.node
        if nxt is None:
            self._finish(w, st, "completed", now)
            return
        st.node = nxt
        self._run(tx, w, j, st, now, prof)

    def next_due_ms(self) -> int | None:
        """When the earliest timer falls due (for the worker's sleep)."""
        with self.store.transaction(read_only=True) as tx:
            row = tx.fetchone("SELECT MIN(due_ms) FROM journey_states WHERE due_ms IS NOT NULL")
        return None if row is None or row[0] is None else int(row[0])

    # -- calls ---------------------------------------------------------------------

    def enter_api(self, project: str, journey_id: str, user_id: int,
                  properties: dict[str, Any] | None = None, key: str | None = None) -> bool:
        """Enter one user through an API-entry journey; False when a rule refuses it."""
        props = dict(properties or {})
        now = self.clock.now_ms()
        with self.store.transaction() as tx:
            self.book.refresh(tx, force=True)
            cur = self.book.current.get((project, journey_id))
            if cur is None:
                raise NotFound(f"journey {journey_id!r} does not exist in project {project!r}")
            j = self.book.get(project, journey_id, cur[0])
            if not isinstance(j.entry, ApiEntry):
                raise InvalidInput("entry.type", "this journey is not entered through the API")
            if cur[1] != "active":
                raise InvalidInput("journey", "paused")
            for name in j.entry.required_properties:
                if name not in props:
                    raise InvalidInput(f"properties.{name}", "required by the journey entry")
            entry_key = "a:" + (key or hashlib.sha256(orjson.dumps(
                props, option=orjson.OPT_SORT_KEYS) + str(now).encode()).hexdigest()[:24])
            mine = self._states_of(tx, project, [user_id]).get(user_id, [])
            if self._may_enter(tx, j, cur[0], mine, entry_key, now) is not None:
                return False
            w = Writes()
            st = self._new_state(w, j, cur[0], user_id, entry_key, now,
                                 {**props, "$event": "$api"}, None)
            self._run(tx, w, j, st, now, _Profiles(self.profiles, tx))
            w.flush(tx)
        self._after(w)
        return True

    def enter_users(self, project: str, journey_id: str, user_ids: Iterable[int],
                    entry_key: str, *, chunk: int = 5000) -> int:
        """Enter many users at once (a segment, a schedule); the timer loop steps them.

        Rows are written at the start node with ``due_ms = now``, so the work is shared
        by every worker through the due index. Returns how many entered.
        """
        now = self.clock.now_ms()
        ids = list(user_ids)
        entered = 0
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            with self.store.transaction() as tx:
                self.book.refresh(tx)
                cur = self.book.current.get((project, journey_id))
                if cur is None:
                    raise NotFound(f"journey {journey_id!r} does not exist")
                j = self.book.get(project, journey_id, cur[0])
                existing = self._states_of(tx, project, part)
                w = Writes()
                for uid in part:
                    if self._may_enter(tx, j, cur[0], existing.get(uid, []), entry_key,
                                       now) is not None:
                        continue
                    st = self._new_state(w, j, cur[0], uid, entry_key, now, {}, None)
                    st.due_ms = now
                    st.wait_event = ARRIVE
                    entered += 1
                w.flush(tx)
        return entered

    def run_schedules(self) -> int:
        """Fire schedule entries whose time has come; returns the users entered."""
        return scheduler.run_schedules(self)
