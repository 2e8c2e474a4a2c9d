"""HTTP routes of the collector: Sensors, Segment, PostHog and the native protocol.

Each route reads the request, hands it to the protocol's pure decoder, submits
the good records to the sink and answers only once the sink has returned (the
records are durable), in the shape that protocol's clients expect:

- Sensors: GET/POST ``/sa``, ``/sa.gif``, ``/debug``; 200 with an empty body (a
  1x1 GIF for GET ``/sa.gif``, ``{}`` for ``/debug``).
- Segment: POST ``/v1/{identify,track,page,screen,group,alias,batch,import}`` and
  analytics.js's ``/v1/{t,i,p,s,g,a,b}``; 200 ``{"success": true}``.
- PostHog: GET/POST ``/e``, ``/i/v0/e``, ``/capture``, ``/track``, ``/engage``,
  ``/batch``, each with or without a trailing slash; 200 ``{"status": 1}``.
- native: POST ``/api/v1/events?project=P``; 200 ``{"accepted": N, "errors": [...]}``.

Bad input never gets a 5xx. Sensors' normal path answers 200 even for records it
refuses (Android resends forever on 403/404/5xx, and deletes on other codes). With a
sink that takes raw batches (the ingest log), that path undoes only the form, the
crc check and base64 before acknowledging, and the pipeline gunzips, parses and
validates and reports what it refuses (see :mod:`touchline.track.raw`); otherwise they are
reported to ``on_errors``. Its debug path and ``Dry-Run`` always validate at once
and the debug path answers 400 with the errors. Segment,
PostHog and native answer 400 (with ``code`` and ``message``) when the request as
a whole cannot be decoded and 401 for a wrong key. Every reply carries CORS
headers; ``OPTIONS`` allows the ``Dry-Run`` header, and ``Dry-Run: true``
validates without storing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router

from ..clock import Clock
from ..config import Settings
from ..errors import AuthError, InvalidInput, PayloadError, StoreError
from ..track.decode import CollectRequest, Decoded, DecodeOptions, is_dry_run
from ..track.native import decode_native
from ..track.posthog import POSTHOG_PATHS, decode_posthog
from ..track.raw import RawBatch, RawSink
from ..track.segment import MAX_BATCH_BYTES, SEGMENT_PATHS, decode_segment
from ..track.sensors import decode_sensors, sensors_raw_batch
from ..track.sink import ProjectDirectory, Sink

__all__ = ["TRANSPARENT_GIF", "CollectOptions", "collect_router", "collect_routes"]

log = logging.getLogger("touchline.collect")

TRANSPARENT_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)

ErrorReporter = Callable[[str, Sequence[InvalidInput]], None]
Handler = Callable[[Request], Awaitable[Response]]

# Bodies above this size are decoded in a worker thread.
THREAD_DECODE_BYTES = 64 * 1024

_ALLOWED_HEADERS = "Content-Type, Content-Encoding, Dry-Run, Authorization, X-Requested-With"


@dataclass(frozen=True, slots=True)
class CollectOptions:
    """What the collector needs from the settings."""

    time_window: bool = True
    extra_junk: frozenset[str] = frozenset()
    max_body_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> CollectOptions:
        decoding = DecodeOptions.from_settings(settings)
        return cls(time_window=decoding.time_window, extra_junk=decoding.extra_junk)


def _log_errors(protocol: str, errors: Sequence[InvalidInput]) -> None:
    log.info("%s: %d record(s) refused, first: %s", protocol, len(errors), errors[0])


class _BodyTooLarge(Exception):
    pass


class _Collector:
    def __init__(self, sink: Sink, projects: ProjectDirectory, clock: Clock,
                 options: CollectOptions, on_errors: ErrorReporter) -> None:
        self.sink = sink
        self.projects = projects
        self.clock = clock
        self.options = options
        self.on_errors = on_errors
        # A sink that validates later takes Sensors' normal path undecoded (raw.py).
        self.raw_sink = sink if isinstance(sink, RawSink) else None
        self.decoders: dict[str, Callable[..., Decoded]] = {
            "sensors": functools.partial(decode_sensors, time_window=options.time_window),
            "segment": decode_segment,
            "posthog": decode_posthog,
            "native": decode_native,
        }

    async def read(self, request: Request) -> CollectRequest:
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
        return CollectRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=b"".join(chunks),
        )

    async def decode(self, protocol: str, req: CollectRequest) -> Decoded:
        if len(req.body) > THREAD_DECODE_BYTES:
            # A big batch takes milliseconds of CPU: keep the event loop serving
            # the other connections meanwhile.
            return await asyncio.to_thread(self.decode_now, protocol, req)
        return self.decode_now(protocol, req)

    def decode_now(self, protocol: str, req: CollectRequest) -> Decoded:
        decoder = self.decoders[protocol]
        try:
            return decoder(req, self.projects, self.clock.now_ms(),
                           extra_junk=self.options.extra_junk)
        except (PayloadError, AuthError):
            raise
        except Exception as exc:
            # Decoding is pure: whatever escaped came from the input. Answer it as
            # bad input (never a 500) and keep the trace for the bug report.
            log.exception("%s: decoder failed on a request", protocol)
            raise PayloadError("body", f"could not be decoded ({type(exc).__name__})") from exc

    async def sensors_raw(self, req: CollectRequest) -> RawBatch:
        now = self.clock.now_ms()
        try:
            if len(req.body) > THREAD_DECODE_BYTES:
                return await asyncio.to_thread(sensors_raw_batch, req, now)
            return sensors_raw_batch(req, now)
        except PayloadError:
            raise
        except Exception as exc:
            log.exception("sensors: transport decoding failed on a request")
            raise PayloadError("body", f"could not be decoded ({type(exc).__name__})") from exc

    async def submit(self, protocol: str, decoded: Decoded) -> None:
        if decoded.errors:
            self.on_errors(protocol, decoded.errors)
        if decoded.records and not decoded.dry_run:
            await self.sink.submit(decoded.records)

    # -- Sensors ---------------------------------------------------------------

    async def sensors(self, request: Request) -> Response:
        debug = request.url.path.rstrip("/").endswith("/debug")
        gif = request.method == "GET" and request.url.path.endswith(".gif")

        def ok() -> Response:
            if gif:
                return Response(TRANSPARENT_GIF, media_type="image/gif")
            return Response(b"", status_code=200)

        raw_sink = None if debug else self.raw_sink
        try:
            req = await self.read(request)
            if raw_sink is not None and not is_dry_run(req):
                await raw_sink.submit_raw(await self.sensors_raw(req))
                return ok()
            decoded = await self.decode("sensors", req)
        except _BodyTooLarge:
            return _errors_response([PayloadError("body", "request too large")], 413)
        except (PayloadError, AuthError) as exc:
            error = exc if isinstance(exc, InvalidInput) else InvalidInput("auth", str(exc))
            self.on_errors("sensors", [error])
            return _errors_response([error], 400) if debug else ok()
        await self.submit("sensors", decoded)
        if debug:
            if decoded.errors:
                return _errors_response(decoded.errors, 400)
            # DebugConsumer reads only the status; the JS SDK's debug mode wants an
            # empty JSON object for "valid".
            return JSONResponse({})
        return ok()

    # -- Segment -----------------------------------------------------------------

    async def segment(self, request: Request) -> Response:
        try:
            req = await self.read(request)
            decoded = await self.decode("segment", req)
        except _BodyTooLarge:
            return _segment_error(400, "request_too_large",
                                  f"request larger than {MAX_BATCH_BYTES // 1024} KB")
        except AuthError as exc:
            return _segment_error(401, "unauthorized", str(exc))
        except PayloadError as exc:
            return _segment_error(400, "invalid_request", str(exc), exc.as_dict())
        await self.submit("segment", decoded)
        body: dict[str, Any] = {"success": True}
        if decoded.errors:
            body["errors"] = decoded.error_dicts()
        return JSONResponse(body)

    # -- PostHog -----------------------------------------------------------------

    async def posthog(self, request: Request) -> Response:
        try:
            req = await self.read(request)
            decoded = await self.decode("posthog", req)
        except _BodyTooLarge:
            return _posthog_error(413, "validation_error", "payload_too_large", "request too large")
        except AuthError as exc:
            return _posthog_error(401, "authentication_error", "invalid_api_key", str(exc))
        except PayloadError as exc:
            return _posthog_error(400, "validation_error", "invalid_payload", str(exc),
                                  exc.as_dict())
        await self.submit("posthog", decoded)
        body: dict[str, Any] = {"status": 1}
        if decoded.errors:
            body["errors"] = decoded.error_dicts()
        return JSONResponse(body)

    # -- native ------------------------------------------------------------------

    async def native(self, request: Request) -> Response:
        try:
            req = await self.read(request)
            decoded = await self.decode("native", req)
        except _BodyTooLarge:
            return _native_error(413, PayloadError("body", "request too large"))
        except AuthError as exc:
            return _native_error(401, InvalidInput("write_key", str(exc)))
        except PayloadError as exc:
            return _native_error(400, exc)
        await self.submit("native", decoded)
        body: dict[str, Any] = {"accepted": len(decoded.records),
                                "errors": decoded.error_dicts()}
        if decoded.dry_run:
            body["dry_run"] = True
        return JSONResponse(body)


def _errors_response(errors: Sequence[InvalidInput], status: int) -> JSONResponse:
    first = errors[0]
    return JSONResponse(
        {"code": "invalid_data", "message": str(first),
         "errors": [e.as_dict() for e in errors]},
        status_code=status,
    )


def _segment_error(status: int, code: str, message: str,
                   extra: dict[str, object] | None = None) -> JSONResponse:
    # Clients read both `code` and `message`; a JSON body missing either makes
    # some of them raise and retry forever.
    return JSONResponse({"code": code, "message": message, **(extra or {})}, status_code=status)


def _posthog_error(status: int, type_: str, code: str, detail: str,
                   extra: dict[str, object] | None = None) -> JSONResponse:
    return JSONResponse(
        {"type": type_, "code": code, "detail": detail, "message": detail, **(extra or {})},
        status_code=status,
    )


def _native_error(status: int, error: InvalidInput) -> JSONResponse:
    return JSONResponse({"accepted": 0, "errors": [error.as_dict()],
                         "code": "invalid_request" if status != 401 else "unauthorized",
                         "message": str(error)}, status_code=status)


def _with_cors(handler: Handler) -> Handler:
    """Answer preflights and put CORS headers on every reply, errors included."""

    async def endpoint(request: Request) -> Response:
        if request.method == "OPTIONS":
            response: Response = Response(b"", status_code=204)
        else:
            try:
                response = await handler(request)
            except StoreError as exc:
                # The records are not durable: a 5xx makes every client retry.
                log.error("sink failed: %s", exc)
                response = JSONResponse({"code": "unavailable", "message": str(exc)},
                                        status_code=503)
        origin = request.headers.get("origin")
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = origin or "*"
        if origin:
            headers["Access-Control-Allow-Credentials"] = "true"
            headers["Vary"] = "Origin"
        headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        requested = request.headers.get("access-control-request-headers")
        headers["Access-Control-Allow-Headers"] = (
            f"{_ALLOWED_HEADERS}, {requested}" if requested else _ALLOWED_HEADERS)
        headers["Access-Control-Max-Age"] = "86400"
        headers["Cache-Control"] = "no-store"
        return response

    return endpoint


def collect_routes(
    *,
    sink: Sink,
    projects: ProjectDirectory,
    clock: Clock,
    settings: Settings | None = None,
    options: CollectOptions | None = None,
    on_errors: ErrorReporter | None = None,
) -> list[BaseRoute]:
    """The collector's routes. ``options`` wins over ``settings``; with neither,
    the defaults apply. ``on_errors`` hears of every refused record (default: log)."""
    if options is None:
        options = CollectOptions.from_settings(settings) if settings else CollectOptions()
    c = _Collector(sink, projects, clock, options, on_errors or _log_errors)
    all_methods = ["GET", "POST", "OPTIONS"]
    routes: list[BaseRoute] = []
    for path in ("/sa", "/sa.gif", "/debug"):
        routes.append(Route(path, _with_cors(c.sensors), methods=all_methods))
    for call in SEGMENT_PATHS:
        routes.append(Route(f"/v1/{call}", _with_cors(c.segment), methods=["POST", "OPTIONS"]))
    for path in POSTHOG_PATHS:
        for variant in (path, path + "/"):
            routes.append(Route(variant, _with_cors(c.posthog), methods=all_methods))
    routes.append(Route("/api/v1/events", _with_cors(c.native), methods=["POST", "OPTIONS"]))
    return routes


def collect_router(
    *,
    sink: Sink,
    projects: ProjectDirectory,
    clock: Clock,
    settings: Settings | None = None,
    options: CollectOptions | None = None,
    on_errors: ErrorReporter | None = None,
) -> Router:
    """The collector as a Starlette Router (an ASGI app of its own)."""
    return Router(routes=collect_routes(sink=sink, projects=projects, clock=clock,
                                        settings=settings, options=options,
                                        on_errors=on_errors))
