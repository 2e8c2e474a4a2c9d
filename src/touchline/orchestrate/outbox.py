"""The delivery side of the outbox: claim, police, render, send, record.

The engine writes a message row in the same transaction as the step that produced
it. This module moves rows from ``queued`` to a final status:

1. **claim** (one transaction): due rows (``next_ms <= now``) are taken in batches
   (``FOR UPDATE SKIP LOCKED`` on PostgreSQL). Each is checked against the delivery
   policy (consent, cross-channel de-dup, quiet hours, frequency caps with priority,
   :mod:`touchline.orchestrate.policy`) and becomes ``skipped``, ``deferred`` (with
   a new ``next_ms``) or ``sending``. A ``sending`` row gets a lease: ``next_ms = now +
   lease``.
2. **send** (no transaction open): every ``sending`` message goes through
   :func:`touchline.orchestrate.channels.deliver` concurrently; the idempotency key
   the channel hands the provider is the message id.
3. **record** (one transaction): ``sent`` / ``failed`` / ``deferred``, and every
   delivery-log line, are written.

Crash safety: a process killed between 1 and 3 leaves rows in ``sending`` whose lease
runs out; the next claim takes them again and resends them *with the same message id*
(without re-running the policy, which already said yes). A provider, or the loopback
sink in the tests, that de-duplicates by idempotency key therefore acts on each
message exactly once; nothing acknowledged by the step is ever lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..clock import Clock
from . import policy as pol
from .bandit import count_sends
from .channels import Channel, DeliveryAttempt, MemoryDeliveryLog, Message, RetryPolicy, deliver
from .templates import SkipSend, render_template

__all__ = [
    "ADDRESS_FIELDS",
    "DeliveryPolicy",
    "Outbox",
    "Renderer",
    "get_consent",
    "set_consent",
]

Renderer = Callable[[str, dict[str, Any]], str]
"""Renders one Liquid source over {profile, event, journey}; raises
:class:`touchline.orchestrate.templates.SkipSend` when a variable without fallback is
missing (the default is :func:`touchline.orchestrate.templates.render_template`)."""

ProfileSource = Callable[[Any, str, Sequence[int]], dict[int, dict[str, Any]]]

# Where a channel's address lives on the profile when the node names no ``to``.
ADDRESS_FIELDS: dict[str, str] = {
    "sms": "mobile",
    "email": "email",
    "official_account": "openid",
    "mini_program": "openid",
    "wechat": "openid",
    "wecom": "wecom_userid",
    "app": "push_token",
    "push": "push_token",
}

Result = tuple["_Row", str, str, int | None, list[DeliveryAttempt]]
"""(row, final status, reason, next attempt ms, delivery-log lines) of one send."""

_OUT_COLS = ("message_id, project, journey_id, version, user_id, entry_key, node, channel, "
             "category, content_key, payload, priority, status, attempts, created_ms")


# The delivery-log status each policy decision writes.
_LOGGED = {"send": "sending", "defer": "deferred", "skip": "skipped"}


@dataclass(frozen=True)
class DeliveryPolicy:
    """Rules across all journeys, applied at send time."""

    caps: tuple[pol.FrequencyCap, ...] = (
        pol.FrequencyCap(limit=2, window_ms=pol.DAY_MS),
        pol.FrequencyCap(limit=5, window_ms=pol.WEEK_MS),
    )
    quiet_start: str = "22:00"
    quiet_end: str = "08:00"
    groups: Mapping[str, pol.SubscriptionGroup] = field(default_factory=lambda: {
        "promotions": pol.SubscriptionGroup("promotions"),
        "membership": pol.SubscriptionGroup("membership"),
    })
    dedup_window_ms: int = pol.WEEK_MS
    cap_mode: str = "skip"
    default_tz: str = "Asia/Shanghai"
    # Per-channel token buckets: {channel: (rate per second, burst)}.
    rate_limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    unsubscribe_base_url: str = ""
    unsubscribe_secret: str = ""


@dataclass(slots=True)
class _Row:
    message_id: str
    project: str
    journey_id: str
    version: int
    user_id: int
    entry_key: str
    node: str
    channel: str
    category: str
    content_key: str
    payload: dict[str, Any]
    priority: int
    status: str
    attempts: int
    created_ms: int

    @classmethod
    def from_db(cls, r: Sequence[Any]) -> _Row:
        return cls(r[0], r[1], r[2], int(r[3]), int(r[4]), r[5], r[6], r[7], r[8], r[9],
                   orjson.loads(r[10]), int(r[11]), r[12], int(r[13]), int(r[14]))


def get_consent(tx: Any, project: str, user_id: int) -> pol.ConsentState:
    row = tx.fetchone("SELECT state FROM journey_consent WHERE project = ? AND user_id = ?",
                      (project, user_id))
    return _consent(row[0]) if row else pol.ConsentState()


def _consent(text: str) -> pol.ConsentState:
    raw = orjson.loads(text)
    return pol.ConsentState(
        unsubscribed_all=bool(raw.get("unsubscribed_all")),
        channels={str(k): bool(v) for k, v in (raw.get("channels") or {}).items()},
        subscribed=frozenset(raw.get("subscribed") or ()),
        unsubscribed=frozenset(raw.get("unsubscribed") or ()))


def set_consent(tx: Any, project: str, user_id: int, state: pol.ConsentState,
                now_ms: int) -> None:
    text = orjson.dumps({"unsubscribed_all": state.unsubscribed_all,
                         "channels": dict(state.channels),
                         "subscribed": sorted(state.subscribed),
                         "unsubscribed": sorted(state.unsubscribed)}).decode()
    tx.execute("INSERT INTO journey_consent (project, user_id, state, updated_ms) "
               "VALUES (?, ?, ?, ?) ON CONFLICT (project, user_id) DO UPDATE SET "
               "state = excluded.state, updated_ms = excluded.updated_ms",
               (project, user_id, text, now_ms))


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


class Outbox:
    """Sends outbox rows through channels under the delivery policy."""

    def __init__(
        self,
        store: Any,
        clock: Clock,
        channels: Mapping[str, Channel],
        *,
        policy: DeliveryPolicy | None = None,
        renderer: Renderer | None = None,
        profiles: ProfileSource | None = None,
        retry: RetryPolicy | None = None,
        lease_ms: int = 30_000,
        concurrency: int = 4,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.channels = dict(channels)
        self.policy = policy or DeliveryPolicy()
        self.renderer: Renderer = renderer or render_template
        self.profiles = profiles
        self.retry = retry or RetryPolicy()
        self.lease_ms = lease_ms
        self.concurrency = concurrency
        self._sleep = sleep
        self._buckets: dict[str, pol.TokenBucket] = {
            ch: pol.TokenBucket(rate, burst) for ch, (rate, burst) in
            self.policy.rate_limits.items()}
        self._claim_lock: str = store.dialect.skip_locked
        self.claimed = 0
        self._sem: asyncio.Semaphore | None = None  # made inside the sending loop
        # The running sending loop and its wake-up event (see wake()).
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._woken = False

    # -- 1. claim ------------------------------------------------------------------

    def claim(self, limit: int = 500) -> list[tuple[_Row, Message]]:
        """Take due rows, decide each under the policy; return the ones to send.

        ``self.claimed`` is set to how many rows were decided (sent, deferred, skipped).
        """
        now = self.clock.now_ms()
        self.claimed = 0
        # Look before taking the write lock (see Engine.run_due).
        due = self.next_due_ms()
        if due is None or due > now:
            return []
        with self.store.transaction() as tx:
            rows = [_Row.from_db(r) for r in tx.fetchall(
                f"SELECT {_OUT_COLS} FROM journey_outbox WHERE next_ms IS NOT NULL AND "
                f"next_ms <= ? ORDER BY next_ms, priority DESC LIMIT ?{self._claim_lock}",
                (now, limit))]
            self.claimed = len(rows)
            if not rows:
                return []
            updates: list[tuple[Any, ...]] = []
            logs: list[tuple[Any, ...]] = []
            out: list[tuple[_Row, Message]] = []
            for project, group in _by_project(rows).items():
                users = sorted({r.user_id for r in group})
                profiles = self._profiles(tx, project, users)
                history, touches = self._history(tx, project, users, now)
                consent = self._consents(tx, project, users)
                # Higher priority first, so it takes the room caps leave.
                for r in sorted(group, key=lambda r: (-r.priority, r.created_ms)):
                    prof = profiles.get(r.user_id, {})
                    if r.status == "sending":
                        decision = pol.Decision("send", "lease expired: resend, same id")
                    else:
                        decision = self._decide(r, prof, history, touches, consent, now)
                    if decision.action == "send":
                        try:
                            msg = self._message(r, prof, now)
                        except SkipSend as exc:
                            decision = pol.Decision("skip", f"template: {exc}")
                    if decision.action == "send":
                        history.setdefault(r.user_id, []).append(
                            pol.SendRecord(now, r.channel, r.category))
                        updates.append(("sending", r.attempts + 1, now + self.lease_ms, None,
                                        now, r.message_id))
                        out.append((r, msg))
                    elif decision.action == "defer":
                        updates.append(("deferred", r.attempts, decision.until_ms,
                                        decision.reason, now, r.message_id))
                    else:
                        updates.append(("skipped", r.attempts, None, decision.reason, now,
                                        r.message_id))
                    logs.append((r.message_id, _LOGGED[decision.action], orjson.dumps(
                        {"reason": decision.reason, **_variant(r)}).decode(), now))
            tx.executemany("UPDATE journey_outbox SET status = ?, attempts = ?, next_ms = ?, "
                           "last_error = ?, updated_ms = ? WHERE message_id = ?", updates)
            tx.executemany("INSERT INTO journey_delivery (message_id, status, detail, at_ms) "
                           "VALUES (?, ?, ?, ?)", logs)
        return out

    def _profiles(self, tx: Any, project: str, users: list[int]) -> dict[int, dict[str, Any]]:
        if self.profiles is None:
            return {}
        return self.profiles(tx, project, users)

    def _history(self, tx: Any, project: str, users: list[int], now: int
                 ) -> tuple[dict[int, list[pol.SendRecord]], dict[int, list[pol.ContentTouch]]]:
        horizon = max([c.window_ms for c in self.policy.caps] + [self.policy.dedup_window_ms])
        history: dict[int, list[pol.SendRecord]] = {}
        touches: dict[int, list[pol.ContentTouch]] = {}
        rows = tx.fetchall(
            "SELECT user_id, updated_ms, channel, category, content_key FROM journey_outbox "
            f"WHERE project = ? AND user_id IN ({_placeholders(len(users))}) AND status = "
            "'sent' AND updated_ms > ?", [project, *users, now - horizon])
        for uid, at, channel, category, key in rows:
            history.setdefault(int(uid), []).append(pol.SendRecord(int(at), channel, category))
            touches.setdefault(int(uid), []).append(
                pol.ContentTouch(key, channel, "sent", int(at)))
        # A goal reached after a message counts as acting on that message's content.
        acted = tx.fetchall(
            "SELECT g.user_id, g.at_ms, o.channel, o.content_key FROM journey_goals g JOIN "
            "journey_outbox o ON o.project = g.project AND o.journey_id = g.journey_id AND "
            "o.user_id = g.user_id AND o.entry_key = g.entry_key AND o.node = g.message_node "
            f"WHERE g.project = ? AND g.user_id IN ({_placeholders(len(users))}) "
            "AND g.at_ms > ?", [project, *users, now - self.policy.dedup_window_ms])
        for uid, at, channel, key in acted:
            touches.setdefault(int(uid), []).append(
                pol.ContentTouch(key, channel, "acted", int(at)))
        return history, touches

    def _consents(self, tx: Any, project: str, users: list[int]
                  ) -> dict[int, pol.ConsentState]:
        rows = tx.fetchall(
            "SELECT user_id, state FROM journey_consent WHERE project = ? AND user_id IN "
            f"({_placeholders(len(users))})", [project, *users])
        return {int(u): _consent(s) for u, s in rows}

    def _decide(self, r: _Row, prof: dict[str, Any],
                history: dict[int, list[pol.SendRecord]],
                touches: dict[int, list[pol.ContentTouch]],
                consent: dict[int, pol.ConsentState], now: int) -> pol.Decision:
        mode = str(r.payload.get("quiet_hours", "defer"))
        quiet = None if mode == "ignore" else pol.QuietHours.parse(
            self.policy.quiet_start, self.policy.quiet_end, mode)
        return pol.decide(
            channel=r.channel, category=r.category, now_ms=now,
            group=str(r.payload.get("subscription_group") or ""),
            content_key=r.content_key, consent=consent.get(r.user_id),
            groups=self.policy.groups, touches=touches.get(r.user_id, ()),
            quiet=quiet, user_tz=prof.get("$timezone"), default_tz=self.policy.default_tz,
            caps=self.policy.caps, history=history.get(r.user_id, ()),
            dedup_window_ms=self.policy.dedup_window_ms,
            cap_mode="defer" if self.policy.cap_mode == "defer" else "skip")

    def _render(self, source: str | None, context: dict[str, Any]) -> str:
        if not source:
            return ""
        return self.renderer(source, context)

    def _message(self, r: _Row, prof: dict[str, Any], now: int) -> Message:
        p = r.payload
        ctx = {"profile": prof, **(p.get("context") or {})}
        to = self._render(p.get("to"), ctx) if p.get("to") else ""
        if not to:
            field_name = ADDRESS_FIELDS.get(r.channel)
            if field_name:
                ids = prof.get("$identities") or {}
                to = str(prof.get(field_name) or (ids.get(field_name) or [""])[0])
        data: dict[str, Any] = dict(p.get("content") or {})
        if "body_json" in p:
            data["body"] = p["body_json"]
        data["journey"] = p.get("journey") or {}
        unsubscribe = ""
        if self.policy.unsubscribe_base_url and self.policy.unsubscribe_secret:
            unsubscribe = pol.unsubscribe_url(
                self.policy.unsubscribe_base_url, self.policy.unsubscribe_secret,
                project=r.project, user_id=str(r.user_id),
                group=str(p.get("subscription_group") or ""), issued_ms=now)
        return Message(
            message_id=r.message_id, project=r.project, user_id=str(r.user_id),
            channel=r.channel, to=to or str(r.user_id),
            subject=self._render(p.get("subject"), ctx), body=self._render(p.get("body"), ctx),
            data=data, template_id=str(p.get("template_id") or ""), priority=r.priority,
            category="transactional" if r.category == "transactional" else "marketing",
            subscription_group=str(p.get("subscription_group") or ""), created_ms=r.created_ms,
            unsubscribe_url=unsubscribe, content_key=r.content_key)

    # -- 2. send -------------------------------------------------------------------

    async def send_one(self, r: _Row, m: Message) -> Result:
        """Deliver one claimed message (retries inside); never raises."""
        log = MemoryDeliveryLog()
        channel = self.channels.get(r.channel)
        if channel is None:
            return (r, "failed", f"no channel configured for {r.channel!r}", None, [])
        bucket = self._buckets.get(r.channel)
        if bucket is not None:
            bucket, ok, wait_s = bucket.take(self.clock.now_ms())
            self._buckets[r.channel] = bucket
            if not ok:
                return (r, "deferred", "rate limit",
                        self.clock.now_ms() + int(wait_s * 1000) + 1, [])
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        async with self._sem:
            kwargs: dict[str, Any] = {"policy": self.retry, "clock": self.clock}
            if self._sleep is not None:
                kwargs["sleep"] = self._sleep
            result = await deliver(channel, m, log, **kwargs)
        if result.status == "sent":
            return (r, "sent", "", None, log.entries)
        if result.status == "retry":
            after = int((result.retry_after_s or 60) * 1000)
            return (r, "deferred", result.reason, self.clock.now_ms() + after, log.entries)
        return (r, "failed", result.reason, None, log.entries)

    async def send(self, batch: Sequence[tuple[_Row, Message]]) -> list[Result]:
        """Deliver every claimed message concurrently."""
        return list(await asyncio.gather(*(self.send_one(r, m) for r, m in batch)))

    # -- 3. record -----------------------------------------------------------------

    def record(self, results: Sequence[Result]) -> None:
        now = self.clock.now_ms()
        with self.store.transaction() as tx:
            # Bandit trials count on send (before the update below moves the row off
            # 'sending', which is what keeps a doubly recorded send from counting twice).
            count_sends(tx, _bandit_sends(results))
            tx.executemany(
                "UPDATE journey_outbox SET status = ?, next_ms = ?, last_error = ?, "
                "updated_ms = ? WHERE message_id = ? AND status = 'sending'",
                [(status, next_ms, reason or None, now, r.message_id)
                 for r, status, reason, next_ms, _ in results])
            tx.executemany(
                "INSERT INTO journey_delivery (message_id, status, detail, at_ms) "
                "VALUES (?, ?, ?, ?)",
                [(a.message_id, a.event, orjson.dumps({
                    "channel": a.channel, "attempt": a.attempt, "reason": a.reason,
                    "provider_response": a.provider_response[:2000],
                    "provider_message_id": a.provider_message_id,
                    "next_attempt_s": a.next_attempt_s, **_variant(r)}).decode(), a.at_ms)
                 for r, *_, log in results for a in log
                 if a.event != "queued"])

    def wake(self) -> None:
        """Claim now rather than at the next poll: rows were just committed.

        Safe from any thread. The engine's callers call it after a step that may
        have written messages, so a new message does not wait out ``poll_s``.
        """
        self._woken = True
        waker = self._waker
        if waker is not None and not waker[1].is_set():
            try:
                waker[0].call_soon_threadsafe(waker[1].set)
            except RuntimeError:  # the sending loop has just closed
                pass

    async def run(self, stopping: Callable[[], bool], *, poll_s: float = 0.05,
                  max_inflight: int = 64, flush_s: float = 0.1) -> None:
        """Stream until ``stopping()``: claim while there is room, record as sends end.

        Rows are claimed as soon as :meth:`wake` says some were committed, and at
        the latest every ``poll_s`` (rows written by another process, deferred rows
        coming due). Unlike :meth:`run_once`, a slow or retrying message never holds
        up the others: claims continue while it waits, and finished sends are
        recorded in groups, at the latest every ``flush_s``.
        """
        ready = asyncio.Event()  # set by wake() and by every finished send
        self._waker = (asyncio.get_running_loop(), ready)
        inflight: set[asyncio.Task[Result]] = set()
        done: list[Result] = []

        def finished(task: asyncio.Task[Result]) -> None:
            inflight.discard(task)
            done.append(task.result())
            ready.set()

        flushed = time.monotonic()
        next_claim = 0.0  # claim at once on start
        try:
            while not stopping() or inflight:
                # Every condition is read again below, so a set that lands between
                # here and the wait only makes the wait return at once.
                ready.clear()
                now = time.monotonic()
                if self._woken:
                    self._woken = False
                    next_claim = now
                room = max_inflight - len(inflight)
                # Each claim is a write transaction: while sends are in flight, wait
                # for room for a useful chunk rather than claim a row at a time.
                if now >= next_claim and not stopping() and (
                        room >= max_inflight // 4 or not inflight):
                    batch = await asyncio.to_thread(self.claim, room)
                    # A full claim may have left due rows: claim again when there is room.
                    next_claim = now if self.claimed >= room else time.monotonic() + poll_s
                    for r, m in batch:
                        task = asyncio.create_task(self.send_one(r, m))
                        inflight.add(task)
                        task.add_done_callback(finished)
                    continue
                # Each record is a write transaction too: group finished sends.
                if done and (not inflight or len(done) >= max_inflight // 2
                             or now - flushed >= flush_s):
                    results = done.copy()
                    done.clear()
                    await asyncio.to_thread(self.record, results)
                    flushed = time.monotonic()
                    continue
                timeout = next_claim - now if next_claim > now else poll_s
                if done:
                    timeout = min(timeout, flushed + flush_s - now)
                try:
                    async with asyncio.timeout(max(0.0, timeout)):
                        await ready.wait()
                except TimeoutError:
                    pass
            if done:
                await asyncio.to_thread(self.record, done.copy())
        finally:
            self._waker = None

    async def run_once(self, limit: int = 500) -> int:
        """One claim-send-record round; returns how many rows it decided (0: idle)."""
        batch = await asyncio.to_thread(self.claim, limit)
        if batch:
            results = await self.send(batch)
            await asyncio.to_thread(self.record, results)
        return self.claimed

    def next_due_ms(self) -> int | None:
        with self.store.transaction(read_only=True) as tx:
            row = tx.fetchone("SELECT MIN(next_ms) FROM journey_outbox WHERE next_ms IS NOT NULL")
        return None if row is None or row[0] is None else int(row[0])


def _variant(r: _Row) -> dict[str, Any]:
    """The content variant for a delivery-log line (nothing for a single-content message)."""
    v = r.payload.get("variant")
    return {"variant": v["id"]} if isinstance(v, dict) and "id" in v else {}


def _bandit_sends(results: Sequence[Result]) -> list[tuple[str, str, str]]:
    """(bandit key, arm, message id) of the sent messages a content bandit chose."""
    out: list[tuple[str, str, str]] = []
    for r, status, *_ in results:
        v = r.payload.get("variant")
        if status == "sent" and isinstance(v, dict) and v.get("bandit"):
            out.append((str(v["bandit"]), str(v["id"]), r.message_id))
    return out


def _by_project(rows: Sequence[_Row]) -> dict[str, list[_Row]]:
    out: dict[str, list[_Row]] = {}
    for r in rows:
        out.setdefault(r.project, []).append(r)
    return out
