"""SMS channel: Alibaba Cloud SMS ``SendSms`` (dysmsapi, version 2017-05-25).

The call is an RPC-style API: form parameters POSTed to ``base_url`` (default
``https://dysmsapi.aliyuncs.com``), signed with signature version 1.0: HMAC-SHA1 over
``POST&%2F&<percent-encoded sorted query>`` keyed by ``AccessKeySecret + "&"``.

Content is a pre-approved template: ``message.template_id`` (or the config's
``template_code``) names it and ``message.data["params"]`` fills its variables. The
message id goes in ``OutId``, which the delivery receipts echo back.

Config: ``access_key_id``, ``access_key_secret``, ``sign_name``, ``template_code``
(optional default), ``region_id`` (cn-hangzhou), ``base_url``, ``timeout_s``.

SendSms is not idempotent: when an attempt goes unanswered (read timeout, dropped
connection), the next attempt first asks ``QuerySendDetails`` whether a send with this
``OutId`` was accepted, and only sends if none was.

Answers: ``Code == "OK"`` is sent (``BizId`` is the provider id); throttling and system
errors retry (per-number flow control after 10 minutes, handed back to the outbox); anything else (bad number, bad template, blacklisted, no balance) fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from .base import DeliveryResult, Message, config_str
from .client import NoAnswer
from .http import HttpChannel, json_body, response_text, status_result

__all__ = ["RETRY_AFTER_S", "RETRY_CODES", "AliyunSmsChannel", "aliyun_signature", "percent_encode"]

# Per-number flow control (1 a minute, 5 an hour, 10 a day by default): waiting inline
# would hold a sender slot for nothing, so the outbox is asked to come back later.
RETRY_AFTER_S = {"isv.BUSINESS_LIMIT_CONTROL": 600.0}

# Codes that mean "not now" rather than "never".
RETRY_CODES = frozenset({
    "isp.SYSTEM_ERROR",
    "isp.GATEWAY_ERROR",
    "isv.BUSINESS_LIMIT_CONTROL",
    "Throttling",
    "Throttling.User",
    "Throttling.Api",
    "ServiceUnavailable",
    "InternalError",
})


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Alibaba Cloud signs it: only ``A-Za-z0-9-_.~`` unescaped."""
    return quote(value, safe="-_.~")


def aliyun_signature(params: Mapping[str, str], secret: str, method: str = "POST") -> str:
    """The ``Signature`` parameter for ``params`` (which must not include it)."""
    canonical = "&".join(
        f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items())
    )
    to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"
    mac = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


# Transport errors after which the request may have reached the provider.
_MAYBE_SENT = NoAnswer
# Alibaba Cloud keys SMS send dates by China time.
_CHINA = timezone(timedelta(hours=8))


class AliyunSmsChannel(HttpChannel):
    """Alibaba Cloud SMS."""

    name: ClassVar[str] = "sms"
    default_base_url: ClassVar[str] = "https://dysmsapi.aliyuncs.com"

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.key_id = config_str(self.config, "access_key_id", self.name)
        self.key_secret = config_str(self.config, "access_key_secret", self.name)
        self.sign_name = config_str(self.config, "sign_name", self.name)
        self.template_code = str(self.config.get("template_code") or "")
        self.region = config_str(self.config, "region_id", self.name, default="cn-hangzhou")
        # Message ids whose last attempt went unanswered (see _already_sent).
        self._uncertain: set[str] = set()

    def signed(self, action: str, fields: Mapping[str, str]) -> dict[str, str]:
        """The common RPC parameters plus ``fields``, signed."""
        params = {
            "AccessKeyId": self.key_id,
            "Action": action,
            "Format": "JSON",
            "RegionId": self.region,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": datetime.fromtimestamp(self.clock.now_ms() / 1000, UTC)
            .strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": "2017-05-25",
            **fields,
        }
        params["Signature"] = aliyun_signature(params, self.key_secret)
        return params

    def params(self, message: Message) -> dict[str, str]:
        """The signed SendSms parameters for ``message``."""
        variables = message.data.get("params") or {}
        return self.signed("SendSms", {
            "OutId": message.message_id,
            "PhoneNumbers": message.to,
            "SignName": self.sign_name,
            "TemplateCode": message.template_id or self.template_code,
            "TemplateParam": orjson.dumps(
                {str(k): str(v) for k, v in dict(variables).items()}).decode(),
        })

    async def attempt(self, message: Message) -> DeliveryResult:
        if not message.to:
            return DeliveryResult("failed", reason="no mobile number")
        if not (message.template_id or self.template_code):
            return DeliveryResult("failed", reason="no SMS template code")
        if message.message_id in self._uncertain:
            found = await self._already_sent(message)
            if found is not None:
                return found
        try:
            response = await self.client.post(self.base_url + "/", data=self.params(message))
        except _MAYBE_SENT:
            # The request went out and no answer came back: it may have been accepted.
            self._uncertain.add(message.message_id)
            raise
        self._uncertain.discard(message.message_id)
        answer = json_body(response)
        if answer is None or "Code" not in answer:
            return status_result(response, self.clock.now_ms())
        text = response_text(response)
        code = str(answer["Code"])
        if code == "OK":
            return DeliveryResult("sent", text, str(answer.get("BizId", "")), reason="OK")
        reason = f"{code}: {answer.get('Message', '')}"
        if code in RETRY_CODES or response.status_code >= 500:
            return DeliveryResult("retry", text, retry_after_s=RETRY_AFTER_S.get(code),
                                  reason=reason)
        return DeliveryResult("failed", text, reason=reason)

    async def _already_sent(self, message: Message) -> DeliveryResult | None:
        """Whether an earlier, unanswered attempt was accepted after all.

        SendSms is not idempotent, so before sending again after a lost answer we ask
        QuerySendDetails for the number's sends of the day and look for our OutId.
        Returns the ``sent`` result if found, None if not, ``retry`` if it cannot tell
        (sending blind could deliver the message twice).
        """
        day = datetime.fromtimestamp(self.clock.now_ms() / 1000, _CHINA)
        response = await self.client.post(self.base_url + "/", data=self.signed(
            "QuerySendDetails", {"PhoneNumber": message.to, "SendDate": day.strftime("%Y%m%d"),
                                 "PageSize": "50", "CurrentPage": "1"}))
        answer = json_body(response)
        text = response_text(response)
        if answer is None or answer.get("Code") != "OK":
            return DeliveryResult("retry", text, reason="send state unknown: query failed")
        details = (answer.get("SmsSendDetailDTOs") or {}).get("SmsSendDetailDTO") or []
        self._uncertain.discard(message.message_id)
        for item in details:
            if isinstance(item, Mapping) and item.get("OutId") == message.message_id:
                return DeliveryResult("sent", text, reason="accepted earlier (QuerySendDetails)")
        return None
