"""What the HTTP channels share: one client (:mod:`.client`), transport-error mapping,
Retry-After, HTTP status mapping and the access-token cache of the WeChat-family APIs."""

from __future__ import annotations

import asyncio
import email.utils
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import orjson

from ...clock import Clock
from .base import Channel, DeliveryResult, Message, config_int, config_str
from .client import HttpClient, HttpResponse, TransportFailure

__all__ = [
    "AccessTokenCache",
    "HttpChannel",
    "ProviderAnswer",
    "parse_retry_after",
    "response_text",
    "status_result",
]

# Longest provider answer kept in a delivery log entry.
_MAX_RESPONSE_CHARS = 2000


class ProviderAnswer(Exception):
    """Raised inside a channel to end the attempt with ``result`` (used for token fetches)."""

    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.reason)
        self.result = result


def response_text(response: HttpResponse) -> str:
    """The provider's answer, truncated for the delivery log."""
    return response.text[:_MAX_RESPONSE_CHARS]


def parse_retry_after(value: str | None, now_ms: int) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit also accepts "¹" and "٣"
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_ms / 1000)


def status_result(response: HttpResponse, now_ms: int) -> DeliveryResult:
    """Generic mapping of an HTTP status: 2xx sent, 408/425/429/5xx retry, other 4xx failed."""
    code = response.status_code
    text = response_text(response)
    if 200 <= code < 300:
        return DeliveryResult("sent", text, reason=f"http {code}")
    if code in (408, 425, 429) or code >= 500:
        wait = parse_retry_after(response.headers.get("retry-after"), now_ms)
        return DeliveryResult("retry", text, retry_after_s=wait, reason=f"http {code}")
    return DeliveryResult("failed", text, reason=f"http {code}")


def json_body(response: HttpResponse) -> dict[str, Any] | None:
    """The response as a JSON object, or None when it is not one."""
    try:
        value = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class HttpChannel(Channel):
    """A channel that calls an HTTP API through one shared :class:`HttpClient`.

    Subclasses implement :meth:`attempt`. Timeouts and connection errors become
    ``retry`` results here, once, for every HTTP channel.
    """

    default_base_url: ClassVar[str] = ""
    requires_base_url: ClassVar[bool] = True

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        clock: Clock | None = None,
        client: HttpClient | None = None,
    ) -> None:
        super().__init__(config, clock=clock)
        if self.requires_base_url:
            base = config_str(self.config, "base_url", self.name,
                              default=self.default_base_url or None)
        else:
            base = str(self.config.get("base_url") or "")
        self.base_url = base.rstrip("/")
        self._client = client
        self._owns_client = client is None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.max_connections = config_int(self.config, "max_connections", self.name, default=100)

    @property
    def client(self) -> HttpClient:
        """The shared client of the running event loop.

        A client's connections belong to the loop that opened them; a caller that runs
        each batch in a fresh loop (``asyncio.run`` per batch) gets a fresh client
        instead of one whose loop is closed.
        """
        loop = asyncio.get_running_loop()
        if self._client is None or (self._owns_client and self._client_loop is not loop):
            self._client = HttpClient(timeout_s=self.timeout_s,
                                      max_connections=self.max_connections)
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            if self._client_loop is asyncio.get_running_loop():
                await self._client.aclose()
            self._client = None

    async def send(self, message: Message) -> DeliveryResult:
        try:
            return await self.attempt(message)
        except ProviderAnswer as answer:
            return answer.result
        except TransportFailure as exc:
            if exc.timeout:
                return DeliveryResult("retry", reason=f"timeout after {self.timeout_s:g}s ({exc})")
            return DeliveryResult("retry", reason=f"connection error: {exc}")

    @abstractmethod
    async def attempt(self, message: Message) -> DeliveryResult:
        """One provider call; may raise :class:`TransportFailure` or :class:`ProviderAnswer`."""


class AccessTokenCache:
    """One cached access token, fetched once however many sends ask at the same time.

    WeChat and WeCom tokens live 7200 s and fetching them is rate limited, so they are
    kept until ``margin_s`` before expiry, or until the provider says one is invalid.
    """

    def __init__(self, clock: Clock, *, margin_s: float = 300.0) -> None:
        self._clock = clock
        self._margin_ms = int(margin_s * 1000)
        self._token = ""
        self._expires_ms = 0
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    async def get(self, fetch: Callable[[], Awaitable[tuple[str, float]]]) -> str:
        """The current token; ``fetch`` returns (token, expires_in seconds)."""
        if self._token and self._clock.now_ms() < self._expires_ms:
            return self._token
        # A lock belongs to one event loop; callers may run batches in fresh loops.
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            self._locks = {loop: asyncio.Lock()}
            lock = self._locks[loop]
        async with lock:
            if self._token and self._clock.now_ms() < self._expires_ms:
                return self._token
            token, expires_in = await fetch()
            life_ms = max(0, int(expires_in * 1000) - self._margin_ms)
            self._token = token
            self._expires_ms = self._clock.now_ms() + life_ms
            return token

    def invalidate(self, token: str) -> None:
        """Drop ``token`` if it is still the cached one (another task may have renewed it)."""
        if self._token == token:
            self._token = ""
            self._expires_ms = 0
