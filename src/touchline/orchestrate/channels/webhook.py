"""Webhook channel: POST the message as JSON, signed with HMAC-SHA256.

Headers sent:

- ``X-Touchline-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed by secret>``
- ``X-Touchline-Timestamp: <ms since epoch>``; the same value is the body's
  ``timestamp`` field, so the signature covers it and a receiver can refuse replays.
- ``Idempotency-Key: <message_id>``: a receiver that saw the key already must not act twice.

The URL is ``config["url"]`` when set (one sink for every message), else ``message.to``.
The body is the whole message (``payload: "message"``, the default); with
``payload: "body"`` it is ``message.data["body"]`` alone when the message has one (a
journey's webhook-call node posting its own JSON to a third-party API).
2xx is sent; 408, 425, 429 and 5xx (honouring Retry-After) and timeouts are retried;
any other 4xx fails.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from ...errors import InvalidInput
from .base import DeliveryResult, Message, config_str
from .http import HttpChannel, json_body, status_result

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "WebhookChannel", "sign_body", "verify_signature"]

SIGNATURE_HEADER = "X-Touchline-Signature"
TIMESTAMP_HEADER = "X-Touchline-Timestamp"


def sign_body(secret: str, body: bytes) -> str:
    """The signature header value for ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body``; constant-time comparison."""
    # Bytes, not str: compare_digest refuses non-ASCII strings, and the header is
    # whatever the sender put there.
    given = header.strip().encode("utf-8", "replace")
    return hmac.compare_digest(sign_body(secret, body).encode(), given)


class WebhookChannel(HttpChannel):
    """Config: ``url`` (optional), ``secret`` (required), ``timeout_s``, ``headers``,
    ``payload`` ("message" or "body")."""

    name: ClassVar[str] = "webhook"
    requires_base_url: ClassVar[bool] = False

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.url = str(self.config.get("url") or "")
        self.secret = config_str(self.config, "secret", self.name)
        self.payload_mode = config_str(self.config, "payload", self.name, default="message")
        if self.payload_mode not in ("message", "body"):
            raise InvalidInput("channels.webhook.payload", "one of message, body")
        extra = self.config.get("headers") or {}
        self.extra_headers = {str(k): str(v) for k, v in dict(extra).items()}

    def payload(self, message: Message, now_ms: int) -> bytes:
        """The exact bytes POSTed (and signed)."""
        if self.payload_mode == "body" and "body" in message.data:
            return orjson.dumps(message.data["body"])
        body = message.to_dict()
        body["timestamp"] = now_ms
        return orjson.dumps(body)

    async def attempt(self, message: Message) -> DeliveryResult:
        url = self.url or message.to
        if not url.startswith(("http://", "https://")):
            return DeliveryResult("failed", reason=f"not an http(s) URL: {url!r}")
        now_ms = self.clock.now_ms()
        body = self.payload(message, now_ms)
        headers = {
            **self.extra_headers,
            "Content-Type": "application/json",
            "Idempotency-Key": message.message_id,
            SIGNATURE_HEADER: sign_body(self.secret, body),
            TIMESTAMP_HEADER: str(now_ms),
        }
        response = await self.client.post(url, content=body, headers=headers)
        result = status_result(response, now_ms)
        if result.status != "sent":
            return result
        answer = json_body(response) or {}
        provider_id = answer.get("id") or response.headers.get("x-request-id") or ""
        return DeliveryResult(
            "sent", result.provider_response, str(provider_id), reason=result.reason
        )
