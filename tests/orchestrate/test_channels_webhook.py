"""Webhook channel and the deliver() helper, against a real loopback HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import ProviderState, free_port, serve, webhook_app

from touchline.clock import VirtualClock
from touchline.errors import InvalidInput
from touchline.orchestrate.channels import (
    Channel,
    DeliveryResult,
    MemoryDeliveryLog,
    Message,
    RetryPolicy,
    WebhookChannel,
    build_channel,
    deliver,
    sign_body,
    verify_signature,
)

SECRET = "s3cret"
START_MS = 1_800_000_000_000


@pytest.fixture
def sink() -> Iterator[ProviderState]:
    state = ProviderState(hang_s=1.0)
    with serve(webhook_app(state, SECRET), state) as s:
        yield s


def msg(n: int = 1, to: str = "") -> Message:
    return Message(
        message_id=f"j1:v1:u{n}:n1:e1", project="demo", user_id=f"u{n}", channel="webhook",
        to=to, subject="Coupon", body="Here is 10% off", data={"coupon": "C10"},
        created_ms=START_MS,
    )


class Sleeps:
    """The sleep deliver() is given: records the waits and moves the virtual clock."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)


def run_deliver(channel: Channel, message: Message, policy: RetryPolicy | None = None,
                ) -> tuple[DeliveryResult, MemoryDeliveryLog, Sleeps]:
    clock = VirtualClock(START_MS)
    sleeps = Sleeps(clock)
    log = MemoryDeliveryLog()

    async def go() -> DeliveryResult:
        try:
            return await deliver(channel, message, log, policy=policy, clock=clock, sleep=sleeps)
        finally:
            await channel.aclose()

    return asyncio.run(go()), log, sleeps


def channel(sink: ProviderState, **extra: object) -> WebhookChannel:
    config = {"url": sink.base_url + "/hook", "secret": SECRET, "timeout_s": 2.0, **extra}
    return WebhookChannel(config, clock=VirtualClock(START_MS))


def test_sent_signed_with_idempotency_key(sink: ProviderState) -> None:
    result, log, sleeps = run_deliver(channel(sink), msg())
    assert result.status == "sent"
    assert result.provider_message_id == "wh-j1:v1:u1:n1:e1"
    assert log.events("j1:v1:u1:n1:e1") == ["queued", "sent"]
    assert sleeps.waits == []
    req = sink.requests[0]
    assert req.headers["idempotency-key"] == "j1:v1:u1:n1:e1"
    assert verify_signature(SECRET, req.body, req.headers["x-touchline-signature"])
    body = orjson.loads(req.body)
    assert body["timestamp"] == START_MS == int(req.headers["x-touchline-timestamp"])
    assert body["data"] == {"coupon": "C10"} and body["user_id"] == "u1"
    assert sink.seen_keys == {"j1:v1:u1:n1:e1": 1}


def test_5xx_retries_with_exponential_backoff_then_sent(sink: ProviderState) -> None:
    sink.script.extend([503, 502])
    result, log, sleeps = run_deliver(channel(sink), msg())
    assert result.status == "sent"
    assert log.events("j1:v1:u1:n1:e1") == ["queued", "retried", "retried", "sent"]
    assert sleeps.waits == [0.5, 1.0]
    retried = log.for_message("j1:v1:u1:n1:e1")[1]
    assert retried.reason == "http 503" and "scripted" in retried.provider_response
    assert retried.next_attempt_s == 0.5
    assert [e.attempt for e in log.entries] == [0, 1, 2, 3]
    assert len(sink.requests) == 3


def test_5xx_forever_fails_with_reason_after_max_attempts(sink: ProviderState) -> None:
    sink.script.extend([500] * 10)
    policy = RetryPolicy(max_attempts=4, initial_s=1, max_backoff_s=3)
    result, log, sleeps = run_deliver(channel(sink), msg(), policy)
    assert result.status == "failed"
    assert result.reason == "gave up after 4 attempt(s): http 500"
    assert sleeps.waits == [1, 2, 3]
    assert log.events("j1:v1:u1:n1:e1") == ["queued", "retried", "retried", "retried", "failed"]
    final = log.final("j1:v1:u1:n1:e1")
    assert final is not None and final.reason == result.reason
    assert len(sink.requests) == 4


def test_retry_after_is_honoured(sink: ProviderState) -> None:
    sink.script.append((429, {"Retry-After": "7"}, {"error": "slow down"}))
    result, _, sleeps = run_deliver(channel(sink), msg())
    assert result.status == "sent"
    assert sleeps.waits == [7.0]


def test_long_retry_after_is_handed_back_not_awaited(sink: ProviderState) -> None:
    sink.script.append((503, {"Retry-After": "3600"}, {"error": "quota"}))
    result, log, sleeps = run_deliver(channel(sink), msg())
    assert result.status == "retry" and result.retry_after_s == 3600
    assert sleeps.waits == []
    assert log.events("j1:v1:u1:n1:e1") == ["queued", "deferred"]


def test_4xx_fails_at_once(sink: ProviderState) -> None:
    sink.script.append(404)
    result, log, _ = run_deliver(channel(sink), msg())
    assert result.status == "failed" and result.reason == "http 404"
    assert log.events("j1:v1:u1:n1:e1") == ["queued", "failed"]
    assert len(sink.requests) == 1


def test_wrong_secret_is_refused_by_the_receiver(sink: ProviderState) -> None:
    wrong = WebhookChannel({"url": sink.base_url + "/hook", "secret": "other"})
    result, _, _ = run_deliver(wrong, msg())
    assert result.status == "failed" and result.reason == "http 401"


def test_timeout_retries_then_fails_while_other_messages_flow(sink: ProviderState) -> None:
    # Generous margins: the machine is shared, and message 2 and 3 must be answered
    # well inside message 1's timeout.
    sink.hang_s = 2.5
    sink.hang_keys.add("j1:v1:u1:n1:e1")
    slow = channel(sink, timeout_s=1.0)
    clock = VirtualClock(START_MS)
    log = MemoryDeliveryLog()
    policy = RetryPolicy(max_attempts=2, initial_s=0.01)

    async def go() -> list[DeliveryResult]:
        # The receiver hangs on message 1 only; the others must not wait on it.
        done = await asyncio.gather(
            *(deliver(slow, msg(n), log, policy=policy, clock=clock) for n in (1, 2, 3)))
        await slow.aclose()
        return list(done)

    first, second, third = asyncio.run(go())
    assert second.status == third.status == "sent"
    assert first.status == "failed"
    assert first.reason.startswith("gave up after 2 attempt(s): timeout after 1s")
    assert log.events("j1:v1:u1:n1:e1") == ["queued", "retried", "failed"]
    assert sink.seen_keys["j1:v1:u2:n1:e1"] == sink.seen_keys["j1:v1:u3:n1:e1"] == 1
    # Two and three were answered while one was still hanging, not after it.
    events = [(e.message_id, e.event) for e in log.entries]
    first_timeout = events.index(("j1:v1:u1:n1:e1", "retried"))
    assert events.index(("j1:v1:u2:n1:e1", "sent")) < first_timeout
    assert events.index(("j1:v1:u3:n1:e1", "sent")) < first_timeout


def test_connection_refused_is_retried_then_failed() -> None:
    closed = WebhookChannel({"url": f"http://127.0.0.1:{free_port()}/hook", "secret": SECRET})
    result, log, sleeps = run_deliver(closed, msg(), RetryPolicy(max_attempts=3))
    assert result.status == "failed" and "connection error" in result.reason
    assert log.events("j1:v1:u1:n1:e1") == ["queued", "retried", "retried", "failed"]
    assert sleeps.waits == [0.5, 1.0]


def test_message_to_is_the_url_when_the_channel_has_none(sink: ProviderState) -> None:
    ch = WebhookChannel({"secret": SECRET})
    result, _, _ = run_deliver(ch, msg(to=sink.base_url + "/hook"))
    assert result.status == "sent"
    bad, _, _ = run_deliver(WebhookChannel({"secret": SECRET}), msg(to="ftp://x"))
    assert bad.status == "failed" and "not an http(s) URL" in bad.reason


def test_body_payload_posts_the_nodes_own_json(sink: ProviderState) -> None:
    m = Message(message_id="j9:v1:u1:n4:e1", project="demo", user_id="u1", channel="webhook",
                to="", data={"body": {"event": "renewal_due", "days": 7}})
    result, _, _ = run_deliver(channel(sink, payload="body"), m)
    assert result.status == "sent"
    req = sink.requests[0]
    assert orjson.loads(req.body) == {"event": "renewal_due", "days": 7}
    assert verify_signature(SECRET, req.body, req.headers["x-touchline-signature"])
    with pytest.raises(InvalidInput):
        channel(sink, payload="xml")


class Exploding(Channel):
    name = "exploding"

    async def send(self, message: Message) -> DeliveryResult:
        raise RuntimeError("bug")


def test_a_channel_that_raises_is_retried_and_logged_not_crashed() -> None:
    result, log, _ = run_deliver(Exploding({}), msg(), RetryPolicy(max_attempts=2))
    assert result.status == "failed"
    assert "channel error: RuntimeError('bug')" in result.reason
    assert log.events("j1:v1:u1:n1:e1") == ["queued", "retried", "failed"]


def test_config_errors_name_the_setting() -> None:
    with pytest.raises(InvalidInput) as err:
        build_channel("webhook", {"url": "http://x"})
    assert err.value.field == "channels.webhook.secret" and err.value.rule == "required"
    with pytest.raises(InvalidInput) as err:
        build_channel("pager", {})
    assert err.value.field == "channels.pager.type"
    with pytest.raises(InvalidInput) as err:
        build_channel("webhook", {"secret": "x", "timeout_s": -1})
    assert err.value.field == "channels.webhook.timeout_s"


def test_message_round_trips_and_refuses_unknown_fields() -> None:
    m = msg()
    assert Message.from_dict(m.to_dict()) == m
    with pytest.raises(InvalidInput) as err:
        Message.from_dict({**m.to_dict(), "colour": "red"})
    assert err.value.field == "message.colour"
    with pytest.raises(InvalidInput):
        Message(message_id="", project="p", user_id="u", channel="c", to="")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8)
_fields = st.sampled_from(["message_id", "project", "user_id", "channel", "to", "subject",
                           "body", "data", "priority", "category", "created_ms", "extra"])


@settings(max_examples=300, deadline=None)
@given(raw=st.dictionaries(_fields, _json, max_size=12))
def test_message_from_any_decoded_json_is_a_message_or_invalid_input(raw: dict[str, object],
                                                                      ) -> None:
    try:
        m = Message.from_dict(raw)
    except InvalidInput as err:
        assert err.field.startswith("message")
        return
    assert Message.from_dict(m.to_dict()) == m


@settings(max_examples=200, deadline=None)
@given(header=st.text(max_size=80), body=st.binary(max_size=50))
def test_any_signature_header_is_answered_not_crashed(header: str, body: bytes) -> None:
    assert verify_signature(SECRET, body, header) is (header.strip() == sign_body(SECRET, body))


@settings(deadline=None)
@given(secret=st.text(min_size=1), body=st.binary(), flip=st.integers(min_value=0))
def test_signature_verifies_and_detects_tampering(secret: str, body: bytes, flip: int) -> None:
    header = sign_body(secret, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify_signature(secret, body, header)
    if body:
        i = flip % len(body)
        tampered = body[:i] + bytes([body[i] ^ 1]) + body[i + 1:]
        assert not verify_signature(secret, tampered, header)
    assert not verify_signature(secret + "x", body, header)


def test_retry_policy_is_checked() -> None:
    with pytest.raises(InvalidInput) as err:
        RetryPolicy(max_attempts=0)
    assert err.value.field == "retry.max_attempts"
    with pytest.raises(InvalidInput) as err:
        RetryPolicy(initial_s=-1)
    assert err.value.field == "retry.initial_s"
    with pytest.raises(InvalidInput) as err:
        RetryPolicy(multiplier=0.5)
    assert err.value.field == "retry.multiplier"
