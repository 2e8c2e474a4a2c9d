"""Delivery policy across all journeys: who may get what, when.

Everything here is a pure function over state passed in (send history, consent,
content touches, bucket levels) and a time in ms; the journey engine loads that state
from the state store and saves what it changes. The checks, in the order
:func:`decide` applies them:

1. consent and subscription groups (marketing only; transactional mail always passes),
2. cross-channel de-duplication (the user already acted on this content),
3. quiet hours in the user's own time zone (defer to the window's end, or skip),
4. frequency caps per channel and overall over rolling windows (marketing only).

Rate limits (:class:`TokenBucket`) are per channel and per process, applied by the
sender right before a provider call. Unsubscribe links are signed tokens
(:func:`make_unsubscribe_token`, :func:`verify_unsubscribe_token`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from typing import Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from ..errors import InvalidInput

__all__ = [
    "DAY_MS",
    "WEEK_MS",
    "CapHit",
    "ConsentState",
    "ContentTouch",
    "Decision",
    "FrequencyCap",
    "QuietHours",
    "SendRecord",
    "SubscriptionGroup",
    "TokenBucket",
    "UnsubscribeClaim",
    "allocate",
    "cap_hit",
    "consent_reason",
    "decide",
    "dedup_reason",
    "make_unsubscribe_token",
    "prune_history",
    "quiet_hours_decision",
    "unsubscribe_url",
    "verify_unsubscribe_token",
]

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS

Action = Literal["send", "defer", "skip"]


@dataclass(frozen=True)
class Decision:
    """``send`` now, ``defer`` until ``until_ms``, or ``skip`` (with the reason)."""

    action: Action
    reason: str = ""
    until_ms: int | None = None


# ---------------------------------------------------------------- frequency caps


@dataclass(frozen=True)
class SendRecord:
    """One message already sent to the user: the counters caps are computed from."""

    at_ms: int
    channel: str
    category: str = "marketing"


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``limit`` messages within any rolling ``window_ms``.

    ``channel`` None caps all channels together. Caps count ``category`` messages only
    (marketing by default): an order confirmation neither counts nor is capped.
    """

    limit: int
    window_ms: int = DAY_MS
    channel: str | None = None
    category: str = "marketing"

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise InvalidInput("cap.limit", "must be >= 0")
        if self.window_ms <= 0:
            raise InvalidInput("cap.window_ms", "must be > 0")

    def applies(self, channel: str, category: str) -> bool:
        return category == self.category and self.channel in (None, channel)


@dataclass(frozen=True)
class CapHit:
    """The cap that binds, and when a slot frees up under it."""

    cap: FrequencyCap
    count: int
    free_at_ms: int


def cap_hit(
    caps: Iterable[FrequencyCap],
    history: Iterable[SendRecord],
    channel: str,
    category: str,
    now_ms: int,
) -> CapHit | None:
    """The first cap a new message would break, or None when every cap has room."""
    records = list(history)
    for cap in caps:
        if not cap.applies(channel, category):
            continue
        start = now_ms - cap.window_ms
        inside = sorted(
            r.at_ms for r in records
            if r.at_ms > start and r.at_ms <= now_ms and cap.applies(r.channel, r.category)
        )
        if len(inside) >= cap.limit:
            # A slot frees when the last of the messages that must leave the window
            # leaves it (a record counts while at_ms > now - window).
            if cap.limit:
                free_at = inside[len(inside) - cap.limit] + cap.window_ms
            else:
                free_at = now_ms + cap.window_ms
            return CapHit(cap, len(inside), free_at)
    return None


@dataclass(frozen=True)
class _Candidate:
    key: str
    channel: str
    category: str
    priority: int
    created_ms: int


def allocate(
    caps: Sequence[FrequencyCap],
    history: Iterable[SendRecord],
    candidates: Iterable[tuple[str, str, str, int, int]],
    now_ms: int,
) -> tuple[list[str], list[str]]:
    """Which of several messages due together get the room the caps leave.

    ``candidates`` are (key, channel, category, priority, created_ms). Higher priority
    goes first, then the older message; returns (keys to send, keys held back).
    """
    ranked = sorted(
        (_Candidate(*c) for c in candidates), key=lambda c: (-c.priority, c.created_ms, c.key)
    )
    sent = list(history)
    allowed: list[str] = []
    held: list[str] = []
    for cand in ranked:
        if cap_hit(caps, sent, cand.channel, cand.category, now_ms) is None:
            allowed.append(cand.key)
            sent.append(SendRecord(now_ms, cand.channel, cand.category))
        else:
            held.append(cand.key)
    return allowed, held


def prune_history(
    history: Iterable[SendRecord], caps: Iterable[FrequencyCap], now_ms: int
) -> list[SendRecord]:
    """The records some cap can still see; what the engine needs to keep."""
    horizon = max((c.window_ms for c in caps), default=0)
    return [r for r in history if r.at_ms > now_ms - horizon]


# ------------------------------------------------------------------ quiet hours


@dataclass(frozen=True)
class QuietHours:
    """No messages from ``start`` to ``end`` local time (may span midnight).

    ``mode`` "defer" holds a message until the window ends; "skip" drops it.
    """

    start: time
    end: time
    mode: Literal["defer", "skip"] = "defer"

    def __post_init__(self) -> None:
        if self.mode not in ("defer", "skip"):
            raise InvalidInput("quiet_hours.mode", "one of defer, skip")

    @classmethod
    def parse(cls, start: str, end: str, mode: str = "defer") -> QuietHours:
        """From "HH:MM" strings; errors name the field."""
        def hhmm(value: str, name: str) -> time:
            try:
                return time.fromisoformat(value)
            except ValueError:
                raise InvalidInput(f"quiet_hours.{name}", "HH:MM") from None
        if mode == "defer":
            return cls(hhmm(start, "start"), hhmm(end, "end"), "defer")
        if mode == "skip":
            return cls(hhmm(start, "start"), hhmm(end, "end"), "skip")
        raise InvalidInput("quiet_hours.mode", "one of defer, skip")


def _zone(name: str | None, fallback: str) -> ZoneInfo:
    for candidate in (name, fallback):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    raise InvalidInput("time_zone", f"unknown time zone {fallback!r}")


def quiet_hours_decision(
    quiet: QuietHours | None, user_tz: str | None, now_ms: int, *, default_tz: str = "UTC"
) -> Decision:
    """Send now, or what to do inside the user's quiet hours.

    The user's zone comes from the profile; an unknown or missing one falls back to
    ``default_tz`` (the project's). The window end is computed in local wall time, so
    daylight-saving changes move it with the user's clock.
    """
    if quiet is None or quiet.start == quiet.end:
        return Decision("send")
    zone = _zone(user_tz, default_tz)
    local = datetime.fromtimestamp(now_ms / 1000, zone)
    t = local.time().replace(tzinfo=None)
    if quiet.start < quiet.end:
        inside = quiet.start <= t < quiet.end
        end_day = local.date()
    else:  # spans midnight: 22:00-08:00
        inside = t >= quiet.start or t < quiet.end
        end_day = local.date() + timedelta(days=1) if t >= quiet.start else local.date()
    if not inside:
        return Decision("send")
    if quiet.mode == "skip":
        return Decision("skip", "quiet hours")
    # On the day clocks fall back a local time happens twice; take the first
    # occurrence that is still ahead of now.
    for fold in (0, 1):
        end = datetime.combine(end_day, quiet.end, tzinfo=zone).replace(fold=fold)
        end_ms = int(end.timestamp() * 1000)
        if end_ms > now_ms:
            return Decision("defer", "quiet hours", end_ms)
    return Decision("send")


# ----------------------------------------------------------- consent and groups


@dataclass(frozen=True)
class SubscriptionGroup:
    """A topic users subscribe to. ``opt_in``: only subscribers get it;
    ``opt_out``: everyone until they unsubscribe. ``channels`` empty means all."""

    name: str
    kind: Literal["opt_in", "opt_out"] = "opt_out"
    channels: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ConsentState:
    """One user's consent, as the engine keeps it."""

    unsubscribed_all: bool = False
    # Explicit per-channel consent; a channel not listed counts as consented.
    channels: Mapping[str, bool] = field(default_factory=dict)
    subscribed: frozenset[str] = frozenset()
    unsubscribed: frozenset[str] = frozenset()

    def unsubscribe(self, group: str | None) -> ConsentState:
        """The state after a one-click unsubscribe (no group: from everything)."""
        if not group:
            return replace(self, unsubscribed_all=True)
        return replace(self, unsubscribed=self.unsubscribed | {group},
                       subscribed=self.subscribed - {group})


def consent_reason(
    consent: ConsentState,
    channel: str,
    category: str,
    group: str,
    groups: Mapping[str, SubscriptionGroup],
) -> str | None:
    """Why the message may not go out, or None when consent allows it."""
    if category == "transactional":
        return None
    if consent.unsubscribed_all:
        return "unsubscribed from all marketing"
    if consent.channels.get(channel) is False:
        return f"no consent for {channel}"
    if not group:
        return None
    spec = groups.get(group)
    if spec is None:
        return f"unknown subscription group {group!r}"
    if spec.channels and channel not in spec.channels:
        return f"group {group!r} does not use {channel}"
    if group in consent.unsubscribed:
        return f"unsubscribed from {group!r}"
    if spec.kind == "opt_in" and group not in consent.subscribed:
        return f"not subscribed to {group!r}"
    return None


# ------------------------------------------------------- cross-channel de-dup


@dataclass(frozen=True)
class ContentTouch:
    """The user got (``sent``) or acted on (``acted``: clicked, converted) a content."""

    content_key: str
    channel: str
    kind: Literal["sent", "acted"]
    at_ms: int


def dedup_reason(
    content_key: str,
    channel: str,
    touches: Iterable[ContentTouch],
    now_ms: int,
    *,
    window_ms: int = WEEK_MS,
    suppress_sent: bool = False,
) -> str | None:
    """Why the same content should not go out again, or None.

    Acting on a content on any channel suppresses it on every other channel within
    ``window_ms``; the same content on the same channel is never sent twice in the
    window; with ``suppress_sent`` any earlier send of it suppresses it everywhere.
    """
    if not content_key:
        return None
    since = now_ms - window_ms
    for touch in touches:
        if touch.content_key != content_key or touch.at_ms <= since:
            continue
        if touch.kind == "acted":
            return f"already acted on {content_key!r} via {touch.channel}"
        if touch.channel == channel:
            return f"{content_key!r} already sent on {channel}"
        if suppress_sent:
            return f"{content_key!r} already sent via {touch.channel}"
    return None


# --------------------------------------------------------------------- decide


def decide(
    *,
    channel: str,
    category: str,
    now_ms: int,
    group: str = "",
    content_key: str = "",
    consent: ConsentState | None = None,
    groups: Mapping[str, SubscriptionGroup] | None = None,
    touches: Iterable[ContentTouch] = (),
    quiet: QuietHours | None = None,
    user_tz: str | None = None,
    default_tz: str = "UTC",
    caps: Sequence[FrequencyCap] = (),
    history: Iterable[SendRecord] = (),
    dedup_window_ms: int = WEEK_MS,
    cap_mode: Literal["defer", "skip"] = "skip",
) -> Decision:
    """All the checks for one message, in order; the first that objects decides.

    Transactional messages skip consent, quiet hours and caps but are still
    de-duplicated. A binding cap skips the message, or with ``cap_mode="defer"``
    holds it until a slot frees.
    """
    reason = consent_reason(consent or ConsentState(), channel, category, group, groups or {})
    if reason:
        return Decision("skip", reason)
    reason = dedup_reason(content_key, channel, touches, now_ms, window_ms=dedup_window_ms)
    if reason:
        return Decision("skip", reason)
    if category == "transactional":
        return Decision("send")
    quiet_decision = quiet_hours_decision(quiet, user_tz, now_ms, default_tz=default_tz)
    if quiet_decision.action != "send":
        return quiet_decision
    hit = cap_hit(caps, history, channel, category, now_ms)
    if hit is not None:
        scope = hit.cap.channel or "all channels"
        why = f"frequency cap {hit.cap.limit} per {hit.cap.window_ms // 1000}s on {scope}"
        if cap_mode == "defer":
            return Decision("defer", why, hit.free_at_ms)
        return Decision("skip", why)
    return Decision("send")


# ------------------------------------------------------------------ rate limits


@dataclass(frozen=True)
class TokenBucket:
    """A token bucket as a value: ``rate_per_s`` refill, ``burst`` capacity.

    :meth:`take` returns the new bucket and whether the call may go now; keep the
    returned bucket (one per channel) and pass the clock's time in.
    """

    rate_per_s: float
    burst: float
    tokens: float = -1.0
    at_ms: int = 0

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0:
            raise InvalidInput("rate_limit.rate_per_s", "must be > 0")
        if self.burst < 1:
            raise InvalidInput("rate_limit.burst", "must be >= 1")

    def level(self, now_ms: int) -> float:
        """Tokens available at ``now_ms`` (a fresh bucket starts full)."""
        if self.tokens < 0:
            return self.burst
        elapsed = max(0, now_ms - self.at_ms) / 1000
        return min(self.burst, self.tokens + elapsed * self.rate_per_s)

    def take(self, now_ms: int, n: float = 1.0) -> tuple[TokenBucket, bool, float]:
        """(new bucket, allowed, seconds to wait before ``n`` tokens are there)."""
        level = self.level(now_ms)
        if level >= n:
            return replace(self, tokens=level - n, at_ms=now_ms), True, 0.0
        wait = (n - level) / self.rate_per_s
        return replace(self, tokens=level, at_ms=now_ms), False, wait


# --------------------------------------------------------------- unsubscribe


@dataclass(frozen=True)
class UnsubscribeClaim:
    """What a verified unsubscribe token says."""

    project: str
    user_id: str
    group: str
    issued_ms: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())


def make_unsubscribe_token(
    secret: str, *, project: str, user_id: str, group: str = "", issued_ms: int
) -> str:
    """A URL-safe token ``payload.mac`` naming who unsubscribes from what."""
    if not secret:
        raise InvalidInput("unsubscribe_secret", "required")
    payload = _b64(orjson.dumps({"p": project, "u": user_id, "g": group, "t": issued_ms}))
    return f"{payload}.{_mac(secret, payload)}"


def verify_unsubscribe_token(
    secrets: str | Collection[str], token: str, now_ms: int, *, max_age_ms: int = 365 * DAY_MS
) -> UnsubscribeClaim:
    """The claim in ``token``; InvalidInput("token", rule) when it is not genuine.

    ``secrets`` may list the current and previous secrets, so rotating one does not
    break links already in inboxes.
    """
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    payload, dot, mac = token.partition(".")
    if not dot or not payload or not mac:
        raise InvalidInput("token", "malformed")
    # The token comes from a URL anyone can edit: only URL-safe base64 is genuine, and
    # comparing bytes keeps compare_digest from refusing non-ASCII input.
    if not (payload.isascii() and mac.isascii()):
        raise InvalidInput("token", "malformed")
    if not any(hmac.compare_digest(_mac(k, payload).encode(), mac.encode())
               for k in keys if k):
        raise InvalidInput("token", "bad signature")
    try:
        raw = orjson.loads(_unb64(payload))
        claim = UnsubscribeClaim(str(raw["p"]), str(raw["u"]), str(raw["g"]), int(raw["t"]))
    except (ValueError, KeyError, TypeError):
        raise InvalidInput("token", "malformed") from None
    if now_ms - claim.issued_ms > max_age_ms:
        raise InvalidInput("token", "expired")
    return claim


def unsubscribe_url(
    base_url: str, secret: str, *, project: str, user_id: str, group: str = "", issued_ms: int
) -> str:
    """The one-click link: ``base_url?token=...`` (POST to it unsubscribes, RFC 8058)."""
    token = make_unsubscribe_token(
        secret, project=project, user_id=user_id, group=group, issued_ms=issued_ms
    )
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}{urlencode({'token': token})}"
