"""A real collector on a loopback port for the official SDKs to talk to.

The ``collector`` fixture is the only thing the SDK tests use: a base ``url``, the
``project`` and its ``write_key``, a ``static_dir`` whose files are served under
``/static/`` (the JS SDK and its test pages), and ``wait_for(n)`` returning the
records that arrived. Here it is uvicorn in a background thread serving the
collector routes into a MemorySink; a fixture that starts ``touchline serve`` and
reads records back through the API can replace it without touching the tests.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from touchline.clock import SystemClock
from touchline.server.collect import collect_routes
from touchline.track.records import Record
from touchline.track.sink import MemorySink, Project, StaticProjects


@dataclass
class Collector:
    url: str
    project: str
    write_key: str
    static_dir: Path
    sink: MemorySink = field(default_factory=MemorySink)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)

    def records(self) -> list[Record]:
        return list(self.sink.records)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Record]:
        """The records once at least ``n`` arrived (fails after ``timeout``), after a
        short grace period that lets unexpected extra records show up too."""
        deadline = time.monotonic() + timeout
        while len(self.sink.records) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} records, got {len(self.sink.records)}: "
                                     f"{[r.event or r.op for r in self.sink.records]}")
            time.sleep(0.02)
        time.sleep(0.1)
        return self.records()

    def clear(self) -> None:
        self.sink.records.clear()
        self.requests.clear()


class _RequestLog:
    """ASGI middleware noting each request's method and path (to see transports)."""

    def __init__(self, app: ASGIApp, log: list[tuple[str, str]]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.log.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


class _ThreadedServer:
    def __init__(self, app: ASGIApp) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the collector did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="session")
def collector_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    static = tmp_path_factory.mktemp("static")
    sink = MemorySink()
    projects = StaticProjects([Project("default", "wk_test_default"),
                               Project("shop", "wk_test_shop")])
    routes = collect_routes(sink=sink, projects=projects, clock=SystemClock())
    app = Starlette(routes=[*routes, Mount("/static", StaticFiles(directory=static))])
    requests: list[tuple[str, str]] = []
    server = _ThreadedServer(_RequestLog(app, requests))
    server.start()
    try:
        yield Collector(url=f"http://127.0.0.1:{server.port}", project="default",
                        write_key="wk_test_default", static_dir=static, sink=sink,
                        requests=requests)
    finally:
        server.stop()


@pytest.fixture
def collector(collector_server: Collector) -> Collector:
    collector_server.clear()
    return collector_server
