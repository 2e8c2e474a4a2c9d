"""Delivering one message: attempts, retries with backoff, and the delivery log.

:func:`deliver` is the only place that retries. It asks the channel for one attempt at
a time; a ``retry`` answer waits (exponential backoff, or the provider's Retry-After
when it gave one) and tries again, up to :attr:`RetryPolicy.max_attempts`. Every step
is written to a :class:`DeliveryLog`: ``queued``, then ``retried`` for each attempt that
will be repeated, then ``sent`` or ``failed`` with the provider's answer.

When a provider asks to wait longer than :attr:`RetryPolicy.max_wait_s` (a daily quota,
say), ``deliver`` does not block: it logs ``deferred`` and returns the ``retry`` result,
and the caller (the outbox) schedules the message again at ``retry_after_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    stop_any,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base

from ...clock import Clock, SystemClock
from ...errors import InvalidInput
from .base import Channel, DeliveryResult, Message

__all__ = [
    "DeliveryAttempt",
    "DeliveryEvent",
    "DeliveryLog",
    "MemoryDeliveryLog",
    "RetryPolicy",
    "deliver",
]

DeliveryEvent = Literal["queued", "sent", "failed", "retried", "deferred"]


@dataclass(frozen=True)
class DeliveryAttempt:
    """One line of a message's delivery log."""

    message_id: str
    channel: str
    event: DeliveryEvent
    attempt: int
    at_ms: int
    reason: str = ""
    provider_response: str = ""
    provider_message_id: str = ""
    # For "retried" and "deferred": seconds until the next attempt.
    next_attempt_s: float | None = None


class DeliveryLog(Protocol):
    """Where delivery steps go. The journey engine stores them; tests keep them in memory."""

    def record(self, entry: DeliveryAttempt) -> None: ...


class MemoryDeliveryLog:
    """A delivery log in a list, with the look-ups tests and dry runs need."""

    def __init__(self) -> None:
        self.entries: list[DeliveryAttempt] = []

    def record(self, entry: DeliveryAttempt) -> None:
        self.entries.append(entry)

    def for_message(self, message_id: str) -> list[DeliveryAttempt]:
        return [e for e in self.entries if e.message_id == message_id]

    def events(self, message_id: str) -> list[DeliveryEvent]:
        return [e.event for e in self.for_message(message_id)]

    def final(self, message_id: str) -> DeliveryAttempt | None:
        """The last sent/failed/deferred entry of a message, if it has one."""
        for entry in reversed(self.for_message(message_id)):
            if entry.event in ("sent", "failed", "deferred"):
                return entry
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """How hard :func:`deliver` tries.

    Waits grow ``initial_s * multiplier**n`` up to ``max_backoff_s``, plus up to
    ``jitter_s`` of random spread so many failed messages do not retry in step.
    """

    max_attempts: int = 5
    initial_s: float = 0.5
    multiplier: float = 2.0
    max_backoff_s: float = 30.0
    jitter_s: float = 0.0
    # A Retry-After longer than this is handed back to the caller instead of awaited.
    max_wait_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidInput("retry.max_attempts", "must be >= 1")
        for name in ("initial_s", "max_backoff_s", "jitter_s", "max_wait_s"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"retry.{name}", "must be >= 0")
        if self.multiplier < 1:
            raise InvalidInput("retry.multiplier", "must be >= 1")


Sleep = Callable[[float], Awaitable[None]]


async def deliver(
    channel: Channel,
    message: Message,
    log: DeliveryLog,
    *,
    policy: RetryPolicy | None = None,
    clock: Clock | None = None,
    sleep: Sleep = asyncio.sleep,
) -> DeliveryResult:
    """Send ``message`` on ``channel`` with retries; every step goes to ``log``.

    Returns the final result: ``sent``, ``failed`` (permanently, or after the last
    attempt; ``reason`` says which), or ``retry`` when the provider asked for a wait
    longer than ``policy.max_wait_s`` (``retry_after_s`` says how long).
    """
    policy = policy or RetryPolicy()
    clock = clock or SystemClock()
    attempts = 0

    def entry(event: DeliveryEvent, result: DeliveryResult | None = None,
              next_s: float | None = None, reason: str | None = None) -> None:
        log.record(DeliveryAttempt(
            message_id=message.message_id,
            channel=channel.name,
            event=event,
            attempt=attempts,
            at_ms=clock.now_ms(),
            reason=reason if reason is not None else (result.reason if result else ""),
            provider_response=result.provider_response if result else "",
            provider_message_id=result.provider_message_id if result else "",
            next_attempt_s=next_s,
        ))

    async def one_attempt() -> DeliveryResult:
        nonlocal attempts
        attempts += 1
        try:
            result = await channel.send(message)
        except Exception as exc:  # a channel bug must not lose the message
            result = DeliveryResult("retry", reason=f"channel error: {exc!r}")
        if result.status == "sent":
            entry("sent", result)
        elif result.status == "failed":
            entry("failed", result)
        return result

    backoff = wait_exponential(
        multiplier=policy.initial_s, exp_base=policy.multiplier, max=policy.max_backoff_s
    ) + wait_random(0, policy.jitter_s)

    def wait(state: RetryCallState) -> float:
        result = _result_of(state)
        if result.retry_after_s is not None:
            return result.retry_after_s
        return float(backoff(state))

    def before_sleep(state: RetryCallState) -> None:
        entry("retried", _result_of(state), next_s=state.upcoming_sleep)

    entry("queued")
    # Most messages go through on the first attempt: make it directly and build the
    # retry machinery only when it is needed (it costs more than the attempt itself).
    first = await one_attempt()
    if first.status != "retry":
        return first
    pending: DeliveryResult | None = first

    async def attempt_again() -> DeliveryResult:
        # Tenacity's attempt 1 is the one already made, so its numbering and backoff
        # schedule line up with the log's.
        nonlocal pending
        if pending is not None:
            known, pending = pending, None
            return known
        return await one_attempt()

    retrying = AsyncRetrying(
        stop=stop_any(stop_after_attempt(policy.max_attempts), _StopOnLongWait(policy.max_wait_s)),
        wait=wait,
        retry=retry_if_result(lambda r: r.status == "retry"),
        before_sleep=before_sleep,
        retry_error_callback=_result_of,
        sleep=sleep,
    )
    result: DeliveryResult = await retrying(attempt_again)
    if result.status != "retry":
        return result
    if (
        result.retry_after_s is not None
        and result.retry_after_s > policy.max_wait_s
        and attempts < policy.max_attempts
    ):
        entry("deferred", result, next_s=result.retry_after_s)
        return result
    reason = f"gave up after {attempts} attempt(s): {result.reason or 'retry'}"
    entry("failed", result, reason=reason)
    return DeliveryResult(
        "failed",
        provider_response=result.provider_response,
        provider_message_id=result.provider_message_id,
        reason=reason,
    )


class _StopOnLongWait(stop_base):
    """Stop when the provider asks for a wait longer than we are willing to block."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        after = _result_of(retry_state).retry_after_s
        return after is not None and after > self.max_wait_s


def _result_of(state: RetryCallState) -> DeliveryResult:
    assert state.outcome is not None  # tenacity sets it before any callback we use
    result: DeliveryResult = state.outcome.result()
    return result
