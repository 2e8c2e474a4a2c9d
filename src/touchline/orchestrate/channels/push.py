"""App push channel: JPush (Jiguang) Push API v3, ``POST /v3/push``.

HTTP Basic auth with ``app_key:master_secret``; one notification to one device
(``audience.registration_id = [message.to]``) with the subject as title, the body as
alert and ``message.data["extras"]`` as extras on Android and iOS. ``options.sendno``
is derived from the message id so a receipt can be matched to its message, and each
message carries a ``cid`` from JPush's cid pool (``GET /v3/push/cid``), the same on every
retry: JPush answers a repeated cid with the first push's result instead of pushing
again.

Config: ``app_key``, ``master_secret``, ``base_url`` (``https://api.jpush.cn``),
``apns_production`` (False), ``time_to_live`` (seconds, 86400), ``use_cid`` (True),
``timeout_s``.

Answers: 200 with ``msg_id`` is sent; 429 and 5xx retry (Retry-After honoured, and
the ``X-Rate-Limit-Reset`` seconds when JPush sends them); error codes 1000 and 1030
(internal error, internal timeout) retry; other 4xx fail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import xxhash

from .base import DeliveryResult, Message, config_int, config_str
from .client import HttpResponse
from .http import HttpChannel, ProviderAnswer, json_body, response_text, status_result

__all__ = ["RETRY_ERRORS", "JPushChannel"]

RETRY_ERRORS = frozenset({1000, 1030})
# A cid is valid for one day; an hour's margin keeps a retry from using a stale one.
_CID_LIFE_MS = 23 * 3_600_000


class JPushChannel(HttpChannel):
    """JPush notifications to one registration id."""

    name: ClassVar[str] = "push"
    default_base_url: ClassVar[str] = "https://api.jpush.cn"

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.auth = (
            config_str(self.config, "app_key", self.name),
            config_str(self.config, "master_secret", self.name),
        )
        self.apns_production = bool(self.config.get("apns_production", False))
        self.ttl = config_int(self.config, "time_to_live", self.name, default=86_400)
        self.use_cid = bool(self.config.get("use_cid", True))
        # message id -> (cid, when assigned); only messages awaiting a retry stay here.
        self._cids: dict[str, tuple[str, int]] = {}
        self._cid_pool: list[str] = []
        self._cid_pool_ms = 0

    def payload(self, message: Message) -> dict[str, Any]:
        """The push object for ``message``."""
        extras = dict(message.data.get("extras") or {})
        extras.setdefault("touchline_message_id", message.message_id)
        return {
            "platform": "all",
            "audience": {"registration_id": [message.to]},
            "notification": {
                "alert": message.body,
                "android": {"alert": message.body, "title": message.subject, "extras": extras},
                "ios": {
                    "alert": {"title": message.subject, "body": message.body},
                    "sound": "default",
                    "extras": extras,
                },
            },
            "options": {
                "sendno": xxhash.xxh32_intdigest(message.message_id.encode()) & 0x7FFFFFFF,
                "time_to_live": self.ttl,
                "apns_production": self.apns_production,
            },
        }

    async def attempt(self, message: Message) -> DeliveryResult:
        if not message.to:
            return DeliveryResult("failed", reason="no registration id")
        payload = self.payload(message)
        if self.use_cid:
            payload["cid"] = await self._cid_for(message.message_id)
        result = await self._push(payload)
        if result.status != "retry":
            # Only a message that will be tried again needs to keep its cid.
            self._cids.pop(message.message_id, None)
        return result

    async def _cid_for(self, message_id: str) -> str:
        """The cid this message is pushed with, the same on every retry.

        JPush answers a push with an already-used cid with the first push's result
        instead of pushing again, so a retry after a lost answer cannot notify twice.
        cids come from ``GET /v3/push/cid`` in batches and are valid for a day.
        """
        now = self.clock.now_ms()
        if len(self._cids) > 10_000:  # messages given up on while awaiting a retry
            self._cids = {k: v for k, v in self._cids.items() if now - v[1] < _CID_LIFE_MS}
        known = self._cids.get(message_id)
        if known is not None and now - known[1] < _CID_LIFE_MS:
            return known[0]
        if not self._cid_pool or now - self._cid_pool_ms >= _CID_LIFE_MS:
            response = await self.client.get(
                f"{self.base_url}/v3/push/cid", params={"count": 10}, auth=self.auth)
            cids = (json_body(response) or {}).get("cidlist")
            if response.status_code != 200 or not isinstance(cids, list) or not cids:
                raise ProviderAnswer(self._error(response, "cid request"))
            self._cid_pool, self._cid_pool_ms = [str(c) for c in cids], now
        cid = self._cid_pool.pop()
        self._cids[message_id] = (cid, now)
        return cid

    async def _push(self, payload: dict[str, Any]) -> DeliveryResult:
        response = await self.client.post(
            f"{self.base_url}/v3/push", json=payload, auth=self.auth
        )
        answer = json_body(response) or {}
        if response.status_code == 200 and "msg_id" in answer:
            return DeliveryResult("sent", response_text(response), str(answer["msg_id"]),
                                  reason="ok")
        return self._error(response, "push")

    def _error(self, response: HttpResponse, what: str) -> DeliveryResult:
        """A JPush answer that is not a success, mapped by status and error code."""
        text = response_text(response)
        answer = json_body(response) or {}
        result = status_result(response, self.clock.now_ms())
        error = answer.get("error")
        if isinstance(error, dict) and error.get("code") is not None:
            code = error["code"]
            result = DeliveryResult(
                "retry" if code in RETRY_ERRORS else result.status, text,
                retry_after_s=result.retry_after_s,
                reason=f"jpush {code}: {error.get('message', '')} (http {response.status_code})",
            )
        if result.status == "retry" and result.retry_after_s is None:
            reset = response.headers.get("x-rate-limit-reset", "")
            if reset.isascii() and reset.isdigit():
                result = DeliveryResult("retry", text, retry_after_s=float(reset),
                                        reason=result.reason)
        if result.status == "sent":  # 2xx without what the API promises
            return DeliveryResult("retry", text, reason=f"{what}: unexpected answer")
        return result
