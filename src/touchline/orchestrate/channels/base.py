"""The message, the delivery result and the channel interface every provider implements.

A :class:`Message` is what the journey engine writes to its outbox; a :class:`Channel`
turns one into one provider call and answers with a :class:`DeliveryResult`. Channels
never retry and never sleep: retrying, backoff and the delivery log live in
:func:`touchline.orchestrate.channels.delivery.deliver`, so every channel behaves the
same way under failure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field
from typing import Any, ClassVar, Literal

from ...clock import Clock, SystemClock
from ...errors import InvalidInput

__all__ = [
    "CATEGORIES",
    "Category",
    "Channel",
    "DeliveryResult",
    "DeliveryStatus",
    "Message",
    "config_float",
    "config_int",
    "config_str",
]

DeliveryStatus = Literal["sent", "failed", "retry"]
Category = Literal["marketing", "transactional"]
CATEGORIES: tuple[str, ...] = ("marketing", "transactional")
_STR_FIELDS = (
    "message_id", "project", "user_id", "channel", "to", "subject", "body", "template_id",
    "subscription_group", "unsubscribe_url", "content_key",
)


@dataclass(frozen=True)
class Message:
    """One message to one recipient on one channel.

    ``message_id`` is deterministic (journey, version, user, node, entry) and is passed
    to providers as their idempotency key, so a resend after a crash is recognised.
    ``to`` is the channel address: an email address, a mobile number, an openid, a
    WeCom user id, a device registration id or a webhook URL.
    ``data`` carries channel extras: ``params`` (template variables for SMS and WeChat
    template messages), ``extras`` (push payload), ``url``, ``html``, ``miniprogram``.
    """

    message_id: str
    project: str
    user_id: str
    channel: str
    to: str
    subject: str = ""
    body: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    template_id: str = ""
    priority: int = 0
    category: Category = "marketing"
    subscription_group: str = ""
    created_ms: int = 0
    # The one-click unsubscribe link, when the sender built one (see policy.unsubscribe_url).
    unsubscribe_url: str = ""
    # What the message is "about" (journey + content), for cross-channel de-duplication.
    content_key: str = ""

    def __post_init__(self) -> None:
        # Messages come back from the outbox as decoded JSON: check shapes, not trust.
        for name in _STR_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise InvalidInput(f"message.{name}", "must be a string")
        for name in ("priority", "created_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"message.{name}", "must be an integer")
        if not isinstance(self.data, Mapping):
            raise InvalidInput("message.data", "must be an object")
        for name in ("message_id", "project", "user_id", "channel"):
            if not getattr(self, name):
                raise InvalidInput(f"message.{name}", "required")
        if self.category not in CATEGORIES:
            raise InvalidInput("message.category", f"one of {', '.join(CATEGORIES)}")

    @property
    def title(self) -> str:
        """Alias of ``subject`` for channels that call it a title (push, WeCom cards)."""
        return self.subject

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the outbox and for webhook bodies)."""
        out = asdict(self)
        out["data"] = dict(self.data)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Message:
        """The inverse of :meth:`to_dict`; unknown keys are an error, not ignored."""
        if not isinstance(raw, Mapping):
            raise InvalidInput("message", "must be an object")
        known = set(cls.__dataclass_fields__)
        unknown = {str(k) for k in raw} - known
        if unknown:
            raise InvalidInput(f"message.{sorted(unknown)[0]}", "unknown field")
        for name, spec in cls.__dataclass_fields__.items():
            if name not in raw and spec.default is MISSING and spec.default_factory is MISSING:
                raise InvalidInput(f"message.{name}", "required")
        return cls(**{str(k): v for k, v in raw.items()})


@dataclass(frozen=True)
class DeliveryResult:
    """What one provider call came to.

    ``retry`` means the provider may accept the same message later (5xx, timeouts,
    throttling); ``failed`` means it never will (bad address, bad credentials, 4xx).
    ``reason`` is a short human line; ``provider_response`` is the provider's own answer.
    """

    status: DeliveryStatus
    provider_response: str = ""
    provider_message_id: str = ""
    retry_after_s: float | None = None
    reason: str = ""


class Channel(ABC):
    """One delivery channel, built from a config dict.

    Subclasses set ``name`` and implement :meth:`send`. ``send`` must not raise for
    anything the provider or the network does: it answers a :class:`DeliveryResult`.
    """

    name: ClassVar[str] = ""

    def __init__(self, config: Mapping[str, Any], *, clock: Clock | None = None) -> None:
        self.config: Mapping[str, Any] = dict(config)
        self.clock: Clock = clock or SystemClock()
        self.timeout_s = config_float(self.config, "timeout_s", self.name, default=10.0)

    @abstractmethod
    async def send(self, message: Message) -> DeliveryResult:
        """Make one attempt to hand ``message`` to the provider."""

    async def aclose(self) -> None:
        """Release connections. Safe to call more than once."""
        return None


def config_str(
    config: Mapping[str, Any], key: str, channel: str, *, default: str | None = None
) -> str:
    """A required (or defaulted) string setting; the error names ``channels.<name>.<key>``."""
    value = config.get(key, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise InvalidInput(f"channels.{channel}.{key}", "required")
    if not isinstance(value, str):
        raise InvalidInput(f"channels.{channel}.{key}", "must be a string")
    return value


def config_float(
    config: Mapping[str, Any], key: str, channel: str, *, default: float
) -> float:
    """A positive number setting."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInput(f"channels.{channel}.{key}", "must be a positive number")
    return float(value)


def config_int(config: Mapping[str, Any], key: str, channel: str, *, default: int) -> int:
    """A positive whole-number setting (ints, or strings of digits from a TOML/env file)."""
    value = config.get(key, default)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInput(f"channels.{channel}.{key}", "must be a positive integer")
    return value
