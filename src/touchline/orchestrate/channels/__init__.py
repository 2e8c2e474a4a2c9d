"""Delivery channels: the message, the channel interface, the providers and ``deliver``.

Build a channel from its config with :func:`build_channel`; send through
:func:`deliver`, which retries and writes the delivery log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...clock import Clock
from ...errors import InvalidInput
from .base import Channel, DeliveryResult, DeliveryStatus, Message
from .delivery import (
    DeliveryAttempt,
    DeliveryEvent,
    DeliveryLog,
    MemoryDeliveryLog,
    RetryPolicy,
    deliver,
)
from .email import EmailChannel
from .push import JPushChannel
from .sms import AliyunSmsChannel
from .webhook import WebhookChannel, sign_body, verify_signature
from .wechat import WeChatTemplateChannel
from .wecom import WeComChannel

__all__ = [
    "CHANNEL_TYPES",
    "AliyunSmsChannel",
    "Channel",
    "DeliveryAttempt",
    "DeliveryEvent",
    "DeliveryLog",
    "DeliveryResult",
    "DeliveryStatus",
    "EmailChannel",
    "JPushChannel",
    "MemoryDeliveryLog",
    "Message",
    "RetryPolicy",
    "WeChatTemplateChannel",
    "WeComChannel",
    "WebhookChannel",
    "build_channel",
    "deliver",
    "sign_body",
    "verify_signature",
]

# Channel type name -> class. A config's "type" picks one (default: the channel name).
CHANNEL_TYPES: dict[str, type[Channel]] = {
    "webhook": WebhookChannel,
    "email": EmailChannel,
    "smtp": EmailChannel,
    "sms": AliyunSmsChannel,
    "aliyun_sms": AliyunSmsChannel,
    "push": JPushChannel,
    "jpush": JPushChannel,
    "wechat": WeChatTemplateChannel,
    "wechat_template": WeChatTemplateChannel,
    "wecom": WeComChannel,
}


def build_channel(
    name: str, config: Mapping[str, Any], *, clock: Clock | None = None
) -> Channel:
    """The channel ``name`` configured by ``config`` (``config["type"]`` overrides
    which implementation). Config errors are InvalidInput naming the setting."""
    kind = str(config.get("type") or name)
    cls = CHANNEL_TYPES.get(kind)
    if cls is None:
        raise InvalidInput(f"channels.{name}.type", f"unknown channel type {kind!r}")
    settings = {k: v for k, v in config.items() if k != "type"}
    return cls(settings, clock=clock)
