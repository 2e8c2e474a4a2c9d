"""Loopback servers that speak each provider's API, for the channel tests.

Each HTTP provider is a small Starlette app run by uvicorn in a thread on a free
127.0.0.1 port. Every request is recorded; ``state.script`` queues answers to give
before the normal behaviour (a status code, or "hang" to sleep past the client's
timeout), so tests can make a provider fail, throttle or time out on cue.
The SMTP server is aiosmtpd's Controller with a handler that records messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message as MimeMessage
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from touchline.orchestrate.channels.sms import aliyun_signature
from touchline.orchestrate.channels.webhook import SIGNATURE_HEADER, verify_signature

__all__ = [
    "ProviderState",
    "Recorded",
    "SmtpSink",
    "aliyun_app",
    "free_port",
    "jpush_app",
    "serve",
    "smtp_sink",
    "webhook_app",
    "wechat_app",
    "wecom_app",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class ProviderState:
    """What a fake provider saw and what it is told to do next."""

    requests: list[Recorded] = field(default_factory=list)
    # Answers to give first, one per matching request: an int status, "hang", or a dict
    # (a JSON body with status 200, for errcode-style APIs).
    script: deque[Any] = field(default_factory=deque)
    hang_s: float = 5.0
    base_url: str = ""
    tokens_issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    seen_keys: dict[str, int] = field(default_factory=dict)
    # JPush: cids handed out, the first result per cid, and devices actually notified.
    cids_issued: list[str] = field(default_factory=list)
    cid_results: dict[str, Any] = field(default_factory=dict)
    pushes: list[str] = field(default_factory=list)
    # SMS the fake Alibaba Cloud accepted: (phone, OutId).
    sms_sent: list[tuple[str, str]] = field(default_factory=list)
    # Webhook idempotency keys whose every request hangs (a receiver stuck on one message).
    hang_keys: set[str] = field(default_factory=set)

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)


async def _record(state: ProviderState, request: Request) -> Recorded:
    rec = Recorded(
        request.method, request.url.path, dict(request.query_params),
        {k.lower(): v for k, v in request.headers.items()}, await request.body(),
    )
    state.requests.append(rec)
    return rec


async def _scripted(state: ProviderState) -> Response | None:
    """The next scripted answer, if any."""
    if not state.script:
        return None
    step = state.script.popleft()
    if step == "hang":
        await asyncio.sleep(state.hang_s)
        return JSONResponse({"late": True})
    if isinstance(step, dict):
        return JSONResponse(step)
    if isinstance(step, tuple):
        code, headers, body = step
        return JSONResponse(body, status_code=code, headers=headers)
    return JSONResponse({"error": "scripted"}, status_code=int(step))


def webhook_app(state: ProviderState, secret: str) -> Starlette:
    """A webhook receiver that checks the signature and counts idempotency keys."""

    async def hook(request: Request) -> Response:
        rec = await _record(state, request)
        if rec.headers.get("idempotency-key") in state.hang_keys:
            await asyncio.sleep(state.hang_s)
        scripted = await _scripted(state)
        if scripted is not None:
            return scripted
        if not verify_signature(secret, rec.body, rec.headers.get(SIGNATURE_HEADER.lower(), "")):
            return JSONResponse({"error": "bad signature"}, status_code=401)
        key = rec.headers.get("idempotency-key", "")
        state.seen_keys[key] = state.seen_keys.get(key, 0) + 1
        return JSONResponse({"id": f"wh-{key}"})

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


def aliyun_app(state: ProviderState, key_id: str, secret: str) -> Starlette:
    """Alibaba Cloud SendSms: checks the RPC signature; 11-digit numbers only."""

    async def rpc(request: Request) -> Response:
        rec = await _record(state, request)
        params = dict(parse_qsl(rec.body.decode()))
        action = params.get("Action")
        # "accept_then_hang": take the send, then never answer (a lost response).
        lose_answer = action == "SendSms" and bool(state.script) and (
            state.script[0] == "accept_then_hang")
        if lose_answer:
            state.script.popleft()
        else:
            scripted = await _scripted(state)
            if scripted is not None:
                return scripted
        signature = params.pop("Signature", "")
        request_id = f"req-{len(state.requests)}"
        if params.get("AccessKeyId") != key_id or aliyun_signature(params, secret) != signature:
            return JSONResponse({"RequestId": request_id, "Code": "SignatureDoesNotMatch",
                                 "Message": "Specified signature is not matched"},
                                status_code=400)
        if action == "QuerySendDetails":
            phone = params.get("PhoneNumber", "")
            found = [{"OutId": out_id, "PhoneNum": phone, "SendStatus": 3,
                      "ErrCode": "DELIVERED"} for p, out_id in state.sms_sent if p == phone]
            return JSONResponse({"RequestId": request_id, "Code": "OK", "Message": "OK",
                                 "TotalCount": len(found),
                                 "SmsSendDetailDTOs": {"SmsSendDetailDTO": found}})
        if action != "SendSms":
            return JSONResponse({"Code": "InvalidAction"}, status_code=400)
        phone = params.get("PhoneNumbers", "")
        if not (phone.isdigit() and len(phone) == 11):
            return JSONResponse({"RequestId": request_id, "Code": "isv.MOBILE_NUMBER_ILLEGAL",
                                 "Message": "invalid mobile number"})
        state.sms_sent.append((phone, params["OutId"]))
        if lose_answer:
            await asyncio.sleep(state.hang_s)
        return JSONResponse({"RequestId": request_id, "Code": "OK", "Message": "OK",
                             "BizId": f"biz-{params['OutId']}"})

    return Starlette(routes=[Route("/", rpc, methods=["POST"])])


def jpush_app(state: ProviderState, app_key: str, master_secret: str) -> Starlette:
    """JPush /v3/push with Basic auth; registration ids starting "gone" are unknown."""
    expected = "Basic " + base64.b64encode(f"{app_key}:{master_secret}".encode()).decode()

    async def cid(request: Request) -> Response:
        rec = await _record(state, request)
        if rec.headers.get("authorization") != expected:
            return JSONResponse({"error": {"code": 1004, "message": "Authen failed"}},
                                status_code=401)
        count = min(10, int(rec.query.get("count", "1")))
        fresh = [f"{app_key}-{uuid.uuid4()}" for _ in range(count)]
        state.cids_issued.extend(fresh)
        return JSONResponse({"cidlist": fresh})

    async def push(request: Request) -> Response:
        rec = await _record(state, request)
        lose_answer = bool(state.script) and state.script[0] == "accept_then_hang"
        if lose_answer:
            state.script.popleft()
        else:
            scripted = await _scripted(state)
            if scripted is not None:
                return scripted
        if rec.headers.get("authorization") != expected:
            return JSONResponse({"error": {"code": 1004, "message": "Authen failed"}},
                                status_code=401)
        body = await request.json()
        cid = body.get("cid")
        if cid is not None and cid not in state.cids_issued:
            return JSONResponse({"error": {"code": 1003, "message": "cid is invalid"}},
                                status_code=400)
        if cid in state.cid_results:  # JPush: the first push's result, no second push
            return JSONResponse(state.cid_results[cid])
        ids = body.get("audience", {}).get("registration_id", [])
        if not ids or ids[0].startswith("gone"):
            return JSONResponse({"error": {"code": 1011,
                                           "message": "cannot find user by this audience"}},
                                status_code=400)
        sendno = str(body.get("options", {}).get("sendno", 0))
        answer = {"sendno": sendno, "msg_id": f"{len(state.requests)}"}
        state.pushes.append(ids[0])
        if cid is not None:
            state.cid_results[cid] = answer
        if lose_answer:
            await asyncio.sleep(state.hang_s)
        return JSONResponse(answer)

    return Starlette(routes=[Route("/v3/push", push, methods=["POST"]),
                             Route("/v3/push/cid", cid, methods=["GET"])])


def _token_routes(state: ProviderState, path: str, id_key: str, secret_key: str,
                  app_id: str, app_secret: str, bad_credentials: int) -> Route:
    async def token(request: Request) -> Response:
        rec = await _record(state, request)
        if rec.query.get(id_key) != app_id or rec.query.get(secret_key) != app_secret:
            return JSONResponse({"errcode": bad_credentials, "errmsg": "invalid credential"})
        tok = f"tok-{len(state.tokens_issued) + 1}"
        state.tokens_issued.append(tok)
        return JSONResponse({"errcode": 0, "errmsg": "ok", "access_token": tok,
                             "expires_in": 7200})

    return Route(path, token, methods=["GET"])


def _valid_token(state: ProviderState, rec: Recorded) -> bool:
    tok = rec.query.get("access_token", "")
    return tok in state.tokens_issued and tok not in state.revoked


def wechat_app(state: ProviderState, app_id: str, app_secret: str) -> Starlette:
    """Official account token + template send; openids starting "unfollowed" get 43004."""

    async def send(request: Request) -> Response:
        rec = await _record(state, request)
        if not _valid_token(state, rec):
            return JSONResponse({"errcode": 40001, "errmsg": "invalid credential"})
        scripted = await _scripted(state)
        if scripted is not None:
            return scripted
        body = await request.json()
        if body.get("touser", "").startswith("unfollowed"):
            return JSONResponse({"errcode": 43004, "errmsg": "require subscribe"})
        key = body.get("client_msg_id", "")
        state.seen_keys[key] = state.seen_keys.get(key, 0) + 1
        return JSONResponse({"errcode": 0, "errmsg": "ok", "msgid": 200000 + len(state.requests)})

    return Starlette(routes=[
        _token_routes(state, "/cgi-bin/token", "appid", "secret", app_id, app_secret, 40013),
        Route("/cgi-bin/message/template/send", send, methods=["POST"]),
    ])


def wecom_app(state: ProviderState, corp_id: str, corp_secret: str,
              members: frozenset[str]) -> Starlette:
    """WeCom gettoken + message/send; users outside ``members`` are invalid (81013)."""

    async def send(request: Request) -> Response:
        rec = await _record(state, request)
        if not _valid_token(state, rec):
            return JSONResponse({"errcode": 42001, "errmsg": "access_token expired"})
        scripted = await _scripted(state)
        if scripted is not None:
            return scripted
        body = await request.json()
        users = [u for u in body.get("touser", "").split("|") if u]
        invalid = [u for u in users if u not in members]
        if users and len(invalid) == len(users):
            return JSONResponse({"errcode": 81013, "errmsg": "user & party & tag all invalid"})
        return JSONResponse({"errcode": 0, "errmsg": "ok", "invaliduser": "|".join(invalid),
                             "msgid": f"m{len(state.requests)}"})

    return Starlette(routes=[
        _token_routes(state, "/cgi-bin/gettoken", "corpid", "corpsecret", corp_id,
                      corp_secret, 40013),
        Route("/cgi-bin/message/send", send, methods=["POST"]),
    ])


@contextlib.contextmanager
def serve(app: Starlette, state: ProviderState) -> Iterator[ProviderState]:
    """Run ``app`` on a free loopback port; ``state.base_url`` is where."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("loopback server did not start")
        time.sleep(0.01)
    state.base_url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------------------------ SMTP


@dataclass
class SmtpSink:
    """Messages the SMTP server accepted; recipients it refuses or defers."""

    messages: list[MimeMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    # The client address of each accepted message: one per SMTP connection used.
    peers: list[Any] = field(default_factory=list)
    # recipient -> SMTP reply given at RCPT, e.g. "550 5.1.1 no such user".
    refuse: dict[str, str] = field(default_factory=dict)
    # Replies given at DATA before accepting, one per message, e.g. "451 try later".
    data_script: deque[str] = field(default_factory=deque)
    host: str = "127.0.0.1"
    port: int = 0


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.sink.refuse:
            return self.sink.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.data_script:
            return self.sink.data_script.popleft()
        raw = envelope.original_content or b""
        self.sink.messages.append(message_from_bytes(raw))
        self.sink.raw.append(raw)
        self.sink.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        self.sink.peers.append(session.peer)
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def smtp_sink(*, idle_timeout_s: float = 300.0) -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) on a free loopback port; it drops connections idle
    for ``idle_timeout_s``."""
    sink = SmtpSink(port=free_port())
    controller = Controller(_Handler(sink), hostname=sink.host, port=sink.port,
                            timeout=idle_timeout_s)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@contextlib.contextmanager
def webhook_runtime(data: Any, sink: ProviderState, *, ingest: bool = True,
                    **settings: Any) -> Iterator[Any]:
    """A runtime on ``data`` whose ``app`` channel posts to the loopback ``sink``."""
    from touchline.config import load_settings
    from touchline.runtime import open_runtime

    (data / "channels.yaml").write_text(
        f"app: {{type: webhook, url: '{sink.base_url}/hook', secret: s3cret}}\n")
    rt = open_runtime(load_settings(data, env={}, **settings), ingest=ingest)
    try:
        yield rt
    finally:
        rt.close()
