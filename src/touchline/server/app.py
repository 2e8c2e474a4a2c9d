"""The ASGI application and the ``touchline serve`` process.

One process holds the collector, the REST API (OpenAPI at ``/docs``) and the
workers. On SIGTERM or SIGINT uvicorn stops taking requests, finishes the ones in
flight, and the lifespan hook drains the ingest log into the stores before exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

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

    for route in collect_routes(
        sink=runtime.sink, projects=runtime.projects, clock=runtime.clock,
        settings=runtime.settings, on_errors=on_errors,
    ):
        app.router.routes.append(route)
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


def serve(runtime: Runtime, *, host: str, port: int, on_ready: str | None = None) -> None:
    """Run the server until SIGTERM/SIGINT; everything acknowledged is flushed."""
    app = create_app(runtime)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False,
        loop="uvloop", http="httptools", timeout_graceful_shutdown=10,
        backlog=4096,
    )
    server = _Server(config)
    path = runtime.data_dir / SERVER_FILE

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
        asyncio.run(run())
    finally:
        path.unlink(missing_ok=True)
