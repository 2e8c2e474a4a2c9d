"""Email channel against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from email.header import decode_header, make_header
from email.message import Message as MimeMessage
from urllib.parse import parse_qs, urlparse

import pytest
from servers import SmtpSink, free_port, smtp_sink

from touchline.clock import VirtualClock
from touchline.errors import InvalidInput
from touchline.orchestrate.channels import (
    DeliveryResult,
    EmailChannel,
    MemoryDeliveryLog,
    Message,
    RetryPolicy,
    deliver,
)
from touchline.orchestrate.channels.email import message_id_header
from touchline.orchestrate.policy import verify_unsubscribe_token

START_MS = 1_800_000_000_000
UNSUB_SECRET = "unsub-key"


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with smtp_sink() as sink:
        yield sink


def channel(smtp: SmtpSink, **extra: object) -> EmailChannel:
    config = {"host": smtp.host, "port": smtp.port, "from_addr": "Touchline <news@brand.example>",
              "unsubscribe_base_url": "https://brand.example/u",
              "unsubscribe_secret": UNSUB_SECRET, "timeout_s": 5.0, **extra}
    return EmailChannel(config, clock=VirtualClock(START_MS))


def mail(to: str = "ann@example.com", **kw: object) -> Message:
    fields: dict[str, object] = dict(
        message_id="j1:v1:u1:n2:e1", project="demo", user_id="u1", channel="email", to=to,
        subject="Your weekend family set", body="Two burgers, one price.",
        subscription_group="weekly", created_ms=START_MS)
    fields.update(kw)
    return Message(**fields)  # type: ignore[arg-type]


def payloads(got: MimeMessage) -> dict[str, bytes]:
    """Decoded body of each leaf part, by content type."""
    out: dict[str, bytes] = {}
    for part in got.walk():
        if not part.is_multipart():
            body = part.get_payload(decode=True)
            assert isinstance(body, bytes)
            out[part.get_content_type()] = body
    return out


def send(ch: EmailChannel, m: Message, policy: RetryPolicy | None = None,
         ) -> tuple[DeliveryResult, MemoryDeliveryLog]:
    log = MemoryDeliveryLog()

    async def nosleep(_: float) -> None:
        return None

    async def go() -> DeliveryResult:
        try:
            return await deliver(ch, m, log, policy=policy, sleep=nosleep)
        finally:
            await ch.aclose()

    return asyncio.run(go()), log


def test_marketing_mail_is_delivered_with_ids_and_one_click_unsubscribe(smtp: SmtpSink) -> None:
    result, log = send(channel(smtp), mail(data={"html": "<b>Two burgers</b>"}))
    assert result.status == "sent"
    # ":" is not allowed in a msg-id, so the id is a stable hash of the message id.
    expected_id = message_id_header("j1:v1:u1:n2:e1", "brand.example")
    assert result.provider_message_id == expected_id
    assert expected_id.endswith("@brand.example>") and ":" not in expected_id
    assert log.events("j1:v1:u1:n2:e1") == ["queued", "sent"]
    assert len(smtp.messages) == 1
    got = smtp.messages[0]
    assert got["Message-ID"] == expected_id
    assert got["X-Touchline-Message-Id"] == "j1:v1:u1:n2:e1"
    assert got["Subject"] == "Your weekend family set"
    assert got["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = got["List-Unsubscribe"].strip("<>")
    assert link.startswith("https://brand.example/u?token=")
    token = parse_qs(urlparse(link).query)["token"][0]
    claim = verify_unsubscribe_token(UNSUB_SECRET, token, START_MS)
    assert (claim.project, claim.user_id, claim.group) == ("demo", "u1", "weekly")
    assert got.is_multipart()
    parts = payloads(got)
    assert parts["text/plain"].strip() == b"Two burgers, one price."
    assert parts["text/html"].strip() == b"<b>Two burgers</b>"
    assert smtp.envelopes == [("news@brand.example", ["ann@example.com"])]


def test_transactional_mail_has_no_unsubscribe_header(smtp: SmtpSink) -> None:
    result, _ = send(channel(smtp), mail(category="transactional"))
    assert result.status == "sent"
    assert smtp.messages[0]["List-Unsubscribe"] is None


def test_refused_recipient_fails_without_retry(smtp: SmtpSink) -> None:
    smtp.refuse["nobody@example.com"] = "550 5.1.1 no such user"
    result, log = send(channel(smtp), mail(to="nobody@example.com"))
    assert result.status == "failed"
    assert result.reason.startswith("smtp 550")
    assert "no such user" in result.provider_response
    assert log.events("j1:v1:u1:n2:e1") == ["queued", "failed"]


def test_temporary_smtp_error_is_retried_then_delivered(smtp: SmtpSink) -> None:
    smtp.data_script.extend(["451 4.3.0 try again later"])
    result, log = send(channel(smtp), mail())
    assert result.status == "sent"
    assert log.events("j1:v1:u1:n2:e1") == ["queued", "retried", "sent"]
    retried = log.for_message("j1:v1:u1:n2:e1")[1]
    assert retried.reason.startswith("smtp 451")
    assert len(smtp.messages) == 1


def send_all(ch: EmailChannel, messages: list[Message], pause_s: float = 0.0,
             ) -> list[DeliveryResult]:
    async def go() -> list[DeliveryResult]:
        log = MemoryDeliveryLog()
        out = []
        for m in messages:
            out.append(await deliver(ch, m, log))
            await asyncio.sleep(pause_s)
        await ch.aclose()
        return out

    return asyncio.run(go())


def many(n: int) -> list[Message]:
    return [mail(to=f"user{i}@example.com", message_id=f"j1:v1:u{i}:n2:e1") for i in range(n)]


def test_connections_are_reused_between_messages(smtp: SmtpSink) -> None:
    ch = channel(smtp)
    results = send_all(ch, many(5))
    assert [r.status for r in results] == ["sent"] * 5
    assert len(smtp.messages) == 5 and len(set(smtp.peers)) == 1
    assert ch.connections_opened == 1
    unpooled = channel(smtp, pool_size=0)
    send_all(unpooled, many(3))
    assert unpooled.connections_opened == 3


def test_a_connection_the_server_dropped_is_replaced_not_failed() -> None:
    with smtp_sink(idle_timeout_s=0.3) as smtp:
        ch = channel(smtp)
        results = send_all(ch, many(3), pause_s=0.6)
    assert [r.status for r in results] == ["sent"] * 3
    assert len(smtp.messages) == 3 and ch.connections_opened == 3


def test_a_refused_recipient_does_not_spoil_the_next_message(smtp: SmtpSink) -> None:
    smtp.refuse["user1@example.com"] = "550 5.1.1 no such user"
    results = send_all(channel(smtp), many(3))
    assert [r.status for r in results] == ["sent", "failed", "sent"]
    assert [m["To"] for m in smtp.messages] == ["user0@example.com", "user2@example.com"]


def test_server_down_retries_then_fails_with_reason() -> None:
    ch = EmailChannel({"host": "127.0.0.1", "port": free_port(),
                       "from_addr": "news@brand.example", "timeout_s": 1.0})
    result, log = send(ch, mail(), RetryPolicy(max_attempts=2))
    assert result.status == "failed"
    assert result.reason.startswith("gave up after 2 attempt(s): connection error")
    assert log.events("j1:v1:u1:n2:e1") == ["queued", "retried", "failed"]


def test_bad_address_fails_without_a_connection(smtp: SmtpSink) -> None:
    result, _ = send(channel(smtp), mail(to="not-an-address"))
    assert result.status == "failed" and "not an email address" in result.reason
    assert smtp.messages == []


def test_message_id_header_is_stable_and_valid() -> None:
    assert message_id_header("a.b-c_1", "x.example") == "<a.b-c_1@x.example>"
    odd = message_id_header("journey 1/<user>", "x.example")
    assert odd == message_id_header("journey 1/<user>", "x.example")
    assert " " not in odd and odd.count("<") == 1


def test_config_is_checked() -> None:
    with pytest.raises(InvalidInput) as err:
        EmailChannel({"host": "h", "from_addr": "nope"})
    assert err.value.field == "channels.email.from_addr"
    with pytest.raises(InvalidInput) as err:
        EmailChannel({"host": "h", "port": 70000, "from_addr": "a@b.c"})
    assert err.value.field == "channels.email.port"
    with pytest.raises(InvalidInput) as err:
        EmailChannel({"host": "h", "from_addr": "a@b.c", "pool_size": "4"})
    assert err.value.field == "channels.email.pool_size"


def test_chinese_subject_body_and_name_arrive_intact(smtp: SmtpSink) -> None:
    m = mail(to="张三 <zhang@example.com>", subject="周末亲子套餐 · 8折",
             body="亲爱的会员,本周末全家桶 8 折。\n" * 3, data={"html": "<p>全家桶</p>"})
    result, _ = send(channel(smtp), m)
    assert result.status == "sent"
    got = smtp.messages[0]
    assert smtp.raw[0].isascii(), "the wire form is 7-bit clean"
    assert str(make_header(decode_header(got["Subject"]))) == "周末亲子套餐 · 8折"
    assert "张三" in str(make_header(decode_header(got["To"])))
    # Text travels in canonical form, CRLF line breaks (RFC 2046).
    parts = {k: v.decode("utf-8") for k, v in payloads(got).items()}
    assert parts["text/plain"] == "亲爱的会员,本周末全家桶 8 折。\r\n" * 3
    assert parts["text/html"].strip() == "<p>全家桶</p>"
    assert smtp.envelopes[0][1] == ["zhang@example.com"]
