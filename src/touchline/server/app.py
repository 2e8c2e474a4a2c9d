"""The ASGI application and the ``touchline serve`` process.

One process holds the collector, the REST API (OpenAPI at ``/docs``) and the
workers. On SIGTERM or SIGINT uvicorn stops taking requests, finishes the ones in
flight, and the lifespan hook drains the ingest log into the stores before exit.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import uvicorn
import uvloop
from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..errors import InvalidInput
from ..runtime import Runtime
from .errors import install_error_handlers

__all__ = ["SERVER_FILE", "create_app", "read_server_file", "serve"]

SERVER_FILE = "server.json"

log = logging.getLogger("touchline.collect")


def create_app(runtime: Runtime, *, start_workers: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_workers:
            runtime.start_workers()
        try:
            yield
        finally:
            if start_workers:
                await asyncio.to_thread(runtime.stop_workers)

    app = FastAPI(
        title="Touchline",
        version=__version__,
        description="Customer journey orchestration: collect, stitch, analyze, orchestrate.",
        lifespan=lifespan,
        docs_url="/docs",
    )
    app.state.runtime = runtime
    install_error_handlers(app)

    from .collect import collect_routes

    def on_errors(protocol: str, errors: Sequence[InvalidInput]) -> None:
        log.info("%s: %d record(s) refused, first: %s", protocol, len(errors), errors[0])
        if runtime.pipeline is not None:
            runtime.pipeline.stats.collector_rejected(protocol, errors)

    collector = collect_routes(
        sink=runtime.sink, projects=runtime.projects, clock=runtime.clock,
        settings=runtime.settings, on_errors=on_errors,
    )
    app.router.routes.extend(collector)
    app.state.collector_routes = collector
    for routers in runtime.plugins.hook.api_routers(runtime=runtime):
        for router in routers or []:
            app.include_router(router)
    return app


def read_server_file(data_dir: Path) -> dict[str, object] | None:
    """The address of a server running on this data directory, if one is."""
    path = data_dir / SERVER_FILE
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(info)


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would kill
        # the process before the stores are closed; stop gracefully and return instead.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


# The collector's event loop shares the interpreter lock with the ingest, journey and
# delivery threads, which are busy whenever traffic is. At the default 5 ms switch
# interval every hand-over of the lock to the loop (after each poll, each log
# fsync) could wait a full interval, and the waits add up on every request;
# 0.5 ms cut the ingest benchmark's p99 from about 300 to about 70 ms here.
SWITCH_INTERVAL_S = 0.0005
# Collections stop every thread. The default young-generation threshold (700) makes
# the per-batch churn of the ingest thread promote objects quickly, and the full
# collections that follow took 100-180 ms on a busy server; a larger young
# generation collects the short-lived records while they are still young.
GC_THRESHOLDS = (50_000, 20, 100)


def _tune_interpreter() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.set_threshold(*GC_THRESHOLDS)
    # What is alive after start-up (modules, stores, caches) lives as long as the
    # process: keep it out of every later collection.
    gc.collect()
    gc.freeze()


def collector_first(app: FastAPI) -> ASGIApp:
    """The app with collection requests (nearly all of the traffic) sent straight to
    their routes, past FastAPI's middleware stack and its match over every API route.
    The routes stay in ``app`` too, for clients of the app itself (tests)."""
    direct = {route.path: route for route in app.state.collector_routes
              if isinstance(route, Route)}

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = direct.get(scope["path"])
            if route is not None:
                scope.setdefault("app", app)
                await route.handle(scope, receive, send)
                return
        await app(scope, receive, send)

    return asgi


def serve(runtime: Runtime, *, host: str, port: int, on_ready: str | None = None) -> None:
    """Run the server until SIGTERM/SIGINT; everything acknowledged is flushed."""
    app = create_app(runtime)
    config = uvicorn.Config(
        collector_first(app), host=host, port=port, log_level="warning", access_log=False,
        loop="uvloop", http="httptools", timeout_graceful_shutdown=10,
        backlog=4096,
    )
    server = _Server(config)
    path = runtime.data_dir / SERVER_FILE
    _tune_interpreter()

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.02)
        bound = port
        for s in server.servers:
            for sock in s.sockets:
                bound = sock.getsockname()[1]
        path.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": bound}))
        if on_ready:
            print(on_ready.format(host=host, port=bound), flush=True)
        await task

    try:
        # server.serve() in a loop of our own skips uvicorn's loop set-up: name the
        # loop here, or asyncio's default one would run instead of uvloop.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run())
    finally:
        path.unlink(missing_ok=True)
