"""The HTTP client the provider channels share, on aiohttp.

The channels first used httpx. Under the delivery worker's concurrency its connection
pool became the bottleneck of real-time journeys: about 360 webhook sends a second at
4 in flight and fewer as the pool grew, with the interpreter lock held for most of it
(benchmarks/journeys.py); aiohttp sends thousands a second on the same machine.

The interface is the small part of httpx's the channels use (``get``/``post`` with
``params``, ``content``, ``data``, ``json``, ``headers`` and basic ``auth``, and a
response with ``status_code``, ``headers``, ``content`` and ``text``). Transport
failures are mapped to two errors, because what a channel may do next depends on it:

- :class:`NotSent`: the request never reached the provider (connection refused, DNS,
  a connect timeout): sending again cannot duplicate it.
- :class:`NoAnswer`: it may have reached the provider but no answer came back (a read
  timeout, a dropped connection): a non-idempotent API must check before resending.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

__all__ = ["HttpClient", "HttpResponse", "NoAnswer", "NotSent", "TransportFailure"]


class TransportFailure(Exception):
    """No HTTP answer. ``timeout`` tells a timeout from other failures."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class NotSent(TransportFailure):
    """The request did not reach the provider."""


class NoAnswer(TransportFailure):
    """The request may have reached the provider; its answer did not come back."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status_code: int
    headers: Mapping[str, str]  # case-insensitive
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class HttpClient:
    """One connection pool; create it inside the event loop that will use it."""

    def __init__(self, *, timeout_s: float, max_connections: int) -> None:
        # Separate connect and read limits so that a timeout says whether the request
        # went out (aiohttp raises ConnectionTimeoutError before, SocketTimeoutError after).
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        self.timeout_s = timeout_s
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=max_connections),
            json_serialize=lambda v: orjson.dumps(v).decode(), auto_decompress=True)

    async def get(self, url: str, **kwargs: Any) -> HttpResponse:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> HttpResponse:
        return await self.request("POST", url, **kwargs)

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> HttpResponse:
        body: Any = content if content is not None else data
        all_headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            all_headers["Authorization"] = f"Basic {token}"
        kwargs: dict[str, Any] = {"params": {k: str(v) for k, v in (params or {}).items()},
                                  "headers": all_headers}
        if json is not None:
            kwargs["json"] = json
        else:
            kwargs["data"] = body
        try:
            async with self._session.request(method, url, **kwargs) as response:
                payload = await response.read()
                return HttpResponse(response.status, response.headers, payload)
        except aiohttp.ConnectionTimeoutError as exc:
            raise NotSent(f"connect {type(exc).__name__}", timeout=True) from exc
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
            raise NotSent(repr(exc)) from exc
        except TimeoutError as exc:  # aiohttp's read timeouts derive from it
            raise NoAnswer(type(exc).__name__, timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise NoAnswer(repr(exc)) from exc

    async def aclose(self) -> None:
        await self._session.close()
