"""SMS (Alibaba Cloud), push (JPush), WeChat template and WeCom channels, each against a
loopback server that speaks the provider's API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import parse_qsl

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import (
    ProviderState,
    aliyun_app,
    jpush_app,
    serve,
    wechat_app,
    wecom_app,
)

from touchline.clock import VirtualClock
from touchline.errors import InvalidInput
from touchline.orchestrate.channels import (
    Channel,
    DeliveryResult,
    MemoryDeliveryLog,
    Message,
    RetryPolicy,
    build_channel,
    deliver,
)
from touchline.orchestrate.channels.http import parse_retry_after

START_MS = 1_800_000_000_000


def message(channel: str, to: str, n: int = 1, **kw: object) -> Message:
    fields: dict[str, object] = dict(
        message_id=f"j2:v1:u{n}:n3:e1", project="demo", user_id=f"u{n}", channel=channel,
        to=to, subject="周末亲子套餐", body="Two burgers, one price.", created_ms=START_MS)
    fields.update(kw)
    return Message(**fields)  # type: ignore[arg-type]


def run(ch: Channel, *messages: Message, policy: RetryPolicy | None = None,
        clock: VirtualClock | None = None) -> tuple[list[DeliveryResult], MemoryDeliveryLog]:
    log = MemoryDeliveryLog()
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    async def go() -> list[DeliveryResult]:
        out = [await deliver(ch, m, log, policy=policy, clock=clock, sleep=sleep)
               for m in messages]
        await ch.aclose()
        return out

    return asyncio.run(go()), log


# ------------------------------------------------------------------------- SMS


@pytest.fixture
def aliyun() -> Iterator[ProviderState]:
    state = ProviderState()
    with serve(aliyun_app(state, "AKID", "AKSECRET"), state) as s:
        yield s


def sms(state: ProviderState, secret: str = "AKSECRET") -> Channel:
    return build_channel("sms", {
        "base_url": state.base_url, "access_key_id": "AKID", "access_key_secret": secret,
        "sign_name": "汉堡家", "template_code": "SMS_1001"}, clock=VirtualClock(START_MS))


def test_sms_is_signed_and_sent(aliyun: ProviderState) -> None:
    m = message("sms", "13800138000", data={"params": {"name": "Ann", "amount": 30}})
    [result], log = run(sms(aliyun), m)
    assert result.status == "sent"
    assert result.provider_message_id == "biz-j2:v1:u1:n3:e1"
    params = dict(parse_qsl(aliyun.requests[0].body.decode()))
    assert params["OutId"] == "j2:v1:u1:n3:e1"
    assert params["TemplateCode"] == "SMS_1001" and params["SignName"] == "汉堡家"
    assert orjson.loads(params["TemplateParam"]) == {"name": "Ann", "amount": "30"}
    assert params["Timestamp"] == "2027-01-15T08:00:00Z"
    assert log.events(m.message_id) == ["queued", "sent"]


def test_sms_wrong_secret_fails_on_the_signature_check(aliyun: ProviderState) -> None:
    [result], _ = run(sms(aliyun, secret="wrong"), message("sms", "13800138000"))
    assert result.status == "failed"
    assert result.reason.startswith("SignatureDoesNotMatch")


def test_sms_illegal_number_fails_and_system_errors_retry(aliyun: ProviderState) -> None:
    aliyun.script.append({"Code": "isp.SYSTEM_ERROR", "Message": "系统错误"})
    bad = message("sms", "12345", n=2)
    good = message("sms", "13800138000", n=3)
    (bad_result, good_result), log = run(sms(aliyun), bad, good)
    # The system error went to the first request (the bad number); retried, then refused.
    assert log.events(bad.message_id) == ["queued", "retried", "failed"]
    assert bad_result.reason.startswith("isv.MOBILE_NUMBER_ILLEGAL")
    assert good_result.status == "sent"


def test_sms_flow_control_is_handed_back_to_the_outbox(aliyun: ProviderState) -> None:
    aliyun.script.append({"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发小时级流控"})
    [result], log = run(sms(aliyun), message("sms", "13800138000"))
    assert result.status == "retry" and result.retry_after_s == 600
    assert log.events("j2:v1:u1:n3:e1") == ["queued", "deferred"]
    assert len(aliyun.requests) == 1


def test_sms_5xx_without_json_is_retried(aliyun: ProviderState) -> None:
    aliyun.script.extend([503, 503])
    [result], log = run(sms(aliyun), message("sms", "13800138000"),
                        policy=RetryPolicy(max_attempts=2))
    assert result.status == "failed" and result.reason == "gave up after 2 attempt(s): http 503"
    assert log.events("j2:v1:u1:n3:e1") == ["queued", "retried", "failed"]


def sms_with_timeout(state: ProviderState) -> Channel:
    return build_channel("sms", {
        "base_url": state.base_url, "access_key_id": "AKID", "access_key_secret": "AKSECRET",
        "sign_name": "汉堡家", "template_code": "SMS_1001", "timeout_s": 0.5})


def test_sms_lost_answer_is_not_sent_twice(aliyun: ProviderState) -> None:
    aliyun.hang_s = 1.5
    aliyun.script.append("accept_then_hang")
    m = message("sms", "13800138000")
    [result], log = run(sms_with_timeout(aliyun), m)
    assert result.status == "sent"
    assert result.reason == "accepted earlier (QuerySendDetails)"
    assert log.events(m.message_id) == ["queued", "retried", "sent"]
    assert aliyun.sms_sent == [("13800138000", m.message_id)]
    actions = [dict(parse_qsl(r.body.decode()))["Action"] for r in aliyun.requests]
    assert actions == ["SendSms", "QuerySendDetails"]


def test_sms_unanswered_and_not_accepted_is_sent_once(aliyun: ProviderState) -> None:
    aliyun.hang_s = 1.5
    aliyun.script.append("hang")  # dropped before the provider took it
    m = message("sms", "13800138000")
    [result], _ = run(sms_with_timeout(aliyun), m)
    assert result.status == "sent" and result.provider_message_id == f"biz-{m.message_id}"
    assert aliyun.sms_sent == [("13800138000", m.message_id)]
    actions = [dict(parse_qsl(r.body.decode()))["Action"] for r in aliyun.requests]
    assert actions == ["SendSms", "QuerySendDetails", "SendSms"]


# ------------------------------------------------------------------------ push


@pytest.fixture
def jpush() -> Iterator[ProviderState]:
    state = ProviderState()
    with serve(jpush_app(state, "appkey", "master"), state) as s:
        yield s


def push(state: ProviderState, secret: str = "master") -> Channel:
    return build_channel("push", {"base_url": state.base_url, "app_key": "appkey",
                                  "master_secret": secret})


def test_push_is_sent_to_the_registration_id(jpush: ProviderState) -> None:
    m = message("push", "1a0018970a1b2c3", data={"extras": {"coupon": "C10"}})
    [result], _ = run(push(jpush), m)
    assert result.status == "sent" and result.provider_message_id == "2"
    assert jpush.requests[0].path == "/v3/push/cid"
    body = orjson.loads(jpush.requests[1].body)
    assert body["cid"].startswith("appkey-")
    assert body["audience"] == {"registration_id": ["1a0018970a1b2c3"]}
    assert body["notification"]["android"]["title"] == "周末亲子套餐"
    assert body["notification"]["ios"]["extras"]["coupon"] == "C10"
    assert body["notification"]["ios"]["extras"]["touchline_message_id"] == m.message_id
    assert isinstance(body["options"]["sendno"], int)


def test_push_errors_map_to_failed_and_retry(jpush: ProviderState) -> None:
    [auth], _ = run(push(jpush, secret="nope"), message("push", "1a00"))
    assert auth.status == "failed" and auth.reason.startswith("jpush 1004")
    [gone], _ = run(push(jpush), message("push", "gone-device"))
    assert gone.status == "failed" and gone.reason.startswith("jpush 1011")
    jpush.script.append((429, {"X-Rate-Limit-Reset": "4"},
                         {"error": {"code": 2002, "message": "API call frequency limit"}}))
    jpush.script.append((500, {}, {"error": {"code": 1000, "message": "internal error"}}))
    [ok], log = run(push(jpush), message("push", "1a00", n=5))
    assert ok.status == "sent"
    entries = log.for_message("j2:v1:u5:n3:e1")
    assert [e.event for e in entries] == ["queued", "retried", "retried", "sent"]
    assert entries[1].next_attempt_s == 4.0 and entries[1].reason.startswith("jpush 2002")
    assert entries[2].reason.startswith("jpush 1000")


def test_push_retry_after_a_lost_answer_reuses_the_cid(jpush: ProviderState) -> None:
    jpush.hang_s = 1.5
    jpush.script.append("accept_then_hang")
    ch = build_channel("push", {"base_url": jpush.base_url, "app_key": "appkey",
                                "master_secret": "master", "timeout_s": 0.5})
    m1, m2 = message("push", "1a01", n=1), message("push", "1a02", n=2)
    results, log = run(ch, m1, m2)
    assert [r.status for r in results] == ["sent", "sent"]
    assert log.events(m1.message_id) == ["queued", "retried", "sent"]
    assert jpush.pushes == ["1a01", "1a02"]  # the device was notified once
    bodies = [orjson.loads(r.body) for r in jpush.requests if r.path == "/v3/push"]
    assert bodies[0]["cid"] == bodies[1]["cid"] != bodies[2]["cid"]
    assert jpush.count("/v3/push/cid") == 1


# ---------------------------------------------------------------------- WeChat


@pytest.fixture
def wechat() -> Iterator[ProviderState]:
    state = ProviderState()
    with serve(wechat_app(state, "wxappid", "wxsecret"), state) as s:
        yield s


def wx(state: ProviderState, clock: VirtualClock, secret: str = "wxsecret") -> Channel:
    return build_channel("wechat", {"base_url": state.base_url, "app_id": "wxappid",
                                    "app_secret": secret}, clock=clock)


def test_wechat_template_message_fetches_and_caches_the_token(wechat: ProviderState) -> None:
    clock = VirtualClock(START_MS)
    m1 = message("wechat", "oOPENID1", n=1, template_id="TPL1",
                 data={"params": {"keyword1": "周末亲子套餐", "keyword2": "¥99"},
                       "url": "https://brand.example/w",
                       "miniprogram": {"appid": "wxmini", "pagepath": "pages/set?id=1"}})
    m2 = message("wechat", "oOPENID2", n=2, template_id="TPL1")
    results, _ = run(wx(wechat, clock), m1, m2, clock=clock)
    assert [r.status for r in results] == ["sent", "sent"]
    assert wechat.count("/cgi-bin/token") == 1
    send = wechat.requests[1]
    assert send.path == "/cgi-bin/message/template/send"
    assert send.query["access_token"] == "tok-1"
    body = orjson.loads(send.body)
    assert body["touser"] == "oOPENID1" and body["template_id"] == "TPL1"
    assert body["client_msg_id"] == m1.message_id
    assert body["data"] == {"keyword1": {"value": "周末亲子套餐"}, "keyword2": {"value": "¥99"}}
    assert body["miniprogram"] == {"appid": "wxmini", "pagepath": "pages/set?id=1"}


def test_wechat_token_is_renewed_when_revoked_or_expired(wechat: ProviderState) -> None:
    clock = VirtualClock(START_MS)
    ch = wx(wechat, clock)

    async def go() -> list[DeliveryResult]:
        log = MemoryDeliveryLog()
        first = await deliver(ch, message("wechat", "oA", n=1, template_id="T"), log)
        wechat.revoked.add("tok-1")  # the provider invalidates it early: 40001
        second = await deliver(ch, message("wechat", "oB", n=2, template_id="T"), log)
        clock.advance(7200)  # past expiry: fetched again without a failed call
        third = await deliver(ch, message("wechat", "oC", n=3, template_id="T"), log)
        await ch.aclose()
        return [first, second, third]

    results = asyncio.run(go())
    assert [r.status for r in results] == ["sent", "sent", "sent"]
    assert wechat.tokens_issued == ["tok-1", "tok-2", "tok-3"]
    sends = [r for r in wechat.requests if r.path.endswith("/send")]
    assert [r.query["access_token"] for r in sends] == ["tok-1", "tok-1", "tok-2", "tok-3"]


def test_wechat_errors(wechat: ProviderState) -> None:
    clock = VirtualClock(START_MS)
    [unfollowed], _ = run(wx(wechat, clock), message("wechat", "unfollowed-1", template_id="T"))
    assert unfollowed.status == "failed" and unfollowed.reason.startswith("send errcode 43004")
    [badcred], _ = run(wx(wechat, clock, secret="bad"), message("wechat", "oA", template_id="T"))
    assert badcred.status == "failed" and badcred.reason.startswith("token errcode 40013")
    wechat.script.append({"errcode": 45009, "errmsg": "reach max api daily quota limit"})
    [quota], log = run(wx(wechat, clock), message("wechat", "oA", n=3, template_id="T"))
    assert quota.status == "retry" and quota.retry_after_s == 3600
    assert log.events("j2:v1:u3:n3:e1") == ["queued", "deferred"]
    wechat.script.append({"errcode": -1, "errmsg": "system error"})
    [busy], log = run(wx(wechat, clock), message("wechat", "oA", n=4, template_id="T"))
    assert busy.status == "sent"
    assert log.events("j2:v1:u4:n3:e1") == ["queued", "retried", "sent"]
    [notpl], _ = run(wx(wechat, clock), message("wechat", "oA", n=5))
    assert notpl.status == "failed" and notpl.reason == "no template_id"


# ----------------------------------------------------------------------- WeCom


@pytest.fixture
def wecom() -> Iterator[ProviderState]:
    state = ProviderState()
    with serve(wecom_app(state, "corp", "corpsecret", frozenset({"zhangsan"})), state) as s:
        yield s


def wc(state: ProviderState) -> Channel:
    return build_channel("wecom", {"base_url": state.base_url, "corp_id": "corp",
                                   "corp_secret": "corpsecret", "agent_id": "1000002"})


def test_wecom_text_and_textcard(wecom: ProviderState) -> None:
    text = message("wecom", "zhangsan", n=1)
    card = message("wecom", "zhangsan", n=2, data={"url": "https://brand.example/renew"})
    results, _ = run(wc(wecom), text, card)
    assert [r.status for r in results] == ["sent", "sent"]
    bodies = [orjson.loads(r.body) for r in wecom.requests if r.path == "/cgi-bin/message/send"]
    assert bodies[0]["msgtype"] == "text" and bodies[0]["agentid"] == 1000002
    assert bodies[0]["text"]["content"] == "周末亲子套餐\nTwo burgers, one price."
    assert bodies[0]["enable_duplicate_check"] == 1
    assert bodies[1]["msgtype"] == "textcard"
    assert bodies[1]["textcard"]["url"] == "https://brand.example/renew"
    assert wecom.count("/cgi-bin/gettoken") == 1


def test_wecom_invalid_user_fails_and_expired_token_is_renewed(wecom: ProviderState) -> None:
    ch = wc(wecom)

    async def go() -> list[DeliveryResult]:
        log = MemoryDeliveryLog()
        first = await deliver(ch, message("wecom", "lisi", n=1), log)
        wecom.revoked.add("tok-1")
        second = await deliver(ch, message("wecom", "zhangsan", n=2), log)
        await ch.aclose()
        return [first, second]

    invalid, renewed = asyncio.run(go())
    assert invalid.status == "failed" and invalid.reason.startswith("send errcode 81013")
    assert renewed.status == "sent"
    assert wecom.tokens_issued == ["tok-1", "tok-2"]


def test_wechat_token_is_fetched_once_for_concurrent_sends(wechat: ProviderState) -> None:
    clock = VirtualClock(START_MS)
    ch = wx(wechat, clock)

    async def go() -> list[DeliveryResult]:
        log = MemoryDeliveryLog()
        out = await asyncio.gather(*(
            deliver(ch, message("wechat", f"o{n}", n=n, template_id="T"), log)
            for n in range(20)))
        return list(out)

    # Two separate event loops (a worker running each batch with asyncio.run).
    first = asyncio.run(go())
    second = asyncio.run(go())
    asyncio.run(ch.aclose())
    assert {r.status for r in first + second} == {"sent"}
    assert wechat.tokens_issued == ["tok-1"]
    assert len(wechat.seen_keys) == 20 and set(wechat.seen_keys.values()) == {2}


def test_provider_timeout_is_retried_then_failed_with_reason(aliyun: ProviderState) -> None:
    aliyun.hang_s = 1.0
    aliyun.script.extend(["hang", "hang"])
    ch = build_channel("sms", {
        "base_url": aliyun.base_url, "access_key_id": "AKID", "access_key_secret": "AKSECRET",
        "sign_name": "汉堡家", "template_code": "SMS_1001", "timeout_s": 0.2})
    [result], log = run(ch, message("sms", "13800138000"), policy=RetryPolicy(max_attempts=2))
    assert result.status == "failed"
    assert result.reason.startswith("gave up after 2 attempt(s): timeout after 0.2s")
    assert log.events("j2:v1:u1:n3:e1") == ["queued", "retried", "failed"]


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=40), now=st.integers(0, 4_000_000_000_000))
def test_retry_after_parsing_never_raises(value: str, now: int) -> None:
    wait = parse_retry_after(value, now)
    assert wait is None or wait >= 0
    if value.strip().isdigit() and value.strip().isascii():
        assert wait == float(value.strip())


def test_retry_after_http_date() -> None:
    now = 1_800_000_000_000
    assert parse_retry_after("Fri, 15 Jan 2027 08:00:30 GMT", now) == 30.0
    assert parse_retry_after("Fri, 15 Jan 2027 07:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None


@pytest.mark.parametrize(("name", "config", "field"), [
    ("sms", {"access_key_id": "a", "access_key_secret": "b"}, "channels.sms.sign_name"),
    ("push", {"app_key": "a"}, "channels.push.master_secret"),
    ("push", {"app_key": "a", "master_secret": "b", "time_to_live": "soon"},
     "channels.push.time_to_live"),
    ("wechat", {"app_id": "a"}, "channels.wechat.app_secret"),
    ("wecom", {"corp_id": "a", "corp_secret": "b"}, "channels.wecom.agent_id"),
    ("wecom", {"corp_id": "a", "corp_secret": "b", "agent_id": "x1"}, "channels.wecom.agent_id"),
    ("webhook", {"secret": "s", "max_connections": 0}, "channels.webhook.max_connections"),
])
def test_config_errors_name_the_setting(name: str, config: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        build_channel(name, config)
    assert err.value.field == field


def test_numeric_settings_may_come_as_strings() -> None:
    ch = build_channel("wecom", {"corp_id": "a", "corp_secret": "b", "agent_id": "1000002"})
    assert ch.agent_id == 1000002  # type: ignore[attr-defined]
