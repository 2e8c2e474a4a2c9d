"""WeChat official account template message, and what WeCom shares with it.

Token: ``GET /cgi-bin/token?grant_type=client_credential&appid=..&secret=..`` answers
``{"access_token", "expires_in"}``; it is cached (:class:`AccessTokenCache`) and fetched
again when a call answers 40001/40014/42001 (the send is then repeated once).

Send: ``POST /cgi-bin/message/template/send?access_token=..`` with ``touser`` (the
openid in ``message.to``), ``template_id``, ``data`` (``{key: {"value": ..}}`` from
``message.data["params"]``), optional ``url`` and ``miniprogram`` from ``message.data``,
and ``client_msg_id`` = the message id, WeChat's own guard against duplicate sends.

Config: ``app_id``, ``app_secret``, ``base_url`` (``https://api.weixin.qq.com``),
``timeout_s``.

Answers: ``errcode`` 0 is sent (``msgid``); -1 (system busy) and 45009/45011 (quota)
retry; anything else (43004 not following, 40003 bad openid, 40037 bad template)
fails.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from ...clock import Clock
from .base import DeliveryResult, Message, config_str
from .client import HttpResponse
from .http import (
    AccessTokenCache,
    HttpChannel,
    ProviderAnswer,
    json_body,
    response_text,
    status_result,
)

__all__ = ["TOKEN_ERRORS", "WeChatTemplateChannel", "WeixinChannel"]

# The token is invalid or expired: fetch a new one and repeat the call.
TOKEN_ERRORS = frozenset({40001, 40014, 42001})


class WeixinChannel(HttpChannel):
    """A WeChat-family API: errcode answers and a cached access token.

    Subclasses give the token request (:meth:`token_request`), the send path and body,
    and their retryable error codes.
    """

    retry_errors: ClassVar[frozenset[int]] = frozenset({-1, 45009, 45011})
    # Quota answers: how long until trying again makes sense. 45011 (per-minute quota)
    # is waited out by deliver(); 45009 (daily quota) is longer than deliver() waits,
    # so the message goes back to the outbox to be rescheduled.
    retry_after_s: ClassVar[dict[int, float]] = {45009: 3600.0, 45011: 60.0}
    send_path: ClassVar[str] = ""

    def __init__(self, config: Mapping[str, Any], *, clock: Clock | None = None,
                 **kwargs: Any) -> None:
        super().__init__(config, clock=clock, **kwargs)
        self.tokens = AccessTokenCache(self.clock)

    @abstractmethod
    def token_request(self) -> tuple[str, dict[str, str]]:
        """(path, query) of the token call."""

    @abstractmethod
    def body(self, message: Message) -> dict[str, Any]:
        """The JSON body of the send call."""

    def check(self, message: Message, answer: dict[str, Any]) -> str | None:
        """A reason to fail a call the provider answered with errcode 0, if any."""
        return None

    async def _fetch_token(self) -> tuple[str, float]:
        path, params = self.token_request()
        response = await self.client.get(self.base_url + path, params=params)
        answer = json_body(response)
        if answer is None:
            raise ProviderAnswer(status_result(response, self.clock.now_ms()))
        token = answer.get("access_token")
        if answer.get("errcode", 0) != 0 or not isinstance(token, str) or not token:
            raise ProviderAnswer(self._errcode_result(answer, response_text(response), "token"))
        return token, float(answer.get("expires_in", 7200))

    def _errcode_result(self, answer: dict[str, Any], text: str, what: str) -> DeliveryResult:
        code = answer.get("errcode")
        reason = f"{what} errcode {code}: {answer.get('errmsg', '')}"
        if code in self.retry_errors or code in TOKEN_ERRORS:
            wait = self.retry_after_s.get(code) if isinstance(code, int) else None
            return DeliveryResult("retry", text, retry_after_s=wait, reason=reason)
        return DeliveryResult("failed", text, reason=reason)

    async def _post(
        self, token: str, body: dict[str, Any]
    ) -> tuple[HttpResponse, dict[str, Any] | None]:
        response = await self.client.post(
            self.base_url + self.send_path, params={"access_token": token}, json=body
        )
        return response, json_body(response)

    async def attempt(self, message: Message) -> DeliveryResult:
        if not message.to:
            return DeliveryResult("failed", reason="no recipient")
        body = self.body(message)
        token = await self.tokens.get(self._fetch_token)
        response, answer = await self._post(token, body)
        if answer is not None and answer.get("errcode") in TOKEN_ERRORS:
            self.tokens.invalidate(token)
            token = await self.tokens.get(self._fetch_token)
            response, answer = await self._post(token, body)
        if answer is None:
            return status_result(response, self.clock.now_ms())
        text = response_text(response)
        if answer.get("errcode", 0) != 0:
            return self._errcode_result(answer, text, "send")
        problem = self.check(message, answer)
        if problem:
            return DeliveryResult("failed", text, reason=problem)
        return DeliveryResult("sent", text, str(answer.get("msgid", "")), reason="ok")


class WeChatTemplateChannel(WeixinChannel):
    """WeChat official account template messages."""

    name: ClassVar[str] = "wechat"
    default_base_url: ClassVar[str] = "https://api.weixin.qq.com"
    send_path: ClassVar[str] = "/cgi-bin/message/template/send"

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.app_id = config_str(self.config, "app_id", self.name)
        self.app_secret = config_str(self.config, "app_secret", self.name)

    def token_request(self) -> tuple[str, dict[str, str]]:
        return "/cgi-bin/token", {
            "grant_type": "client_credential", "appid": self.app_id, "secret": self.app_secret,
        }

    def body(self, message: Message) -> dict[str, Any]:
        params = dict(message.data.get("params") or {})
        body: dict[str, Any] = {
            "touser": message.to,
            "template_id": message.template_id,
            "client_msg_id": message.message_id,
            "data": {str(k): {"value": str(v)} for k, v in params.items()},
        }
        if message.data.get("url"):
            body["url"] = str(message.data["url"])
        mini = message.data.get("miniprogram")
        if isinstance(mini, Mapping):
            body["miniprogram"] = {"appid": str(mini.get("appid", "")),
                                   "pagepath": str(mini.get("pagepath", ""))}
        return body

    async def attempt(self, message: Message) -> DeliveryResult:
        if not message.template_id:
            return DeliveryResult("failed", reason="no template_id")
        return await super().attempt(message)
