"""Start and stop a real ``touchline serve`` process on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

TOKEN = "test-admin-token"


@dataclass
class Server:
    data: Path
    proc: subprocess.Popen[bytes]
    url: str
    token: str = TOKEN

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def query(self, sql: str, project: str = "default") -> list[list[object]]:
        with self.client() as c:
            r = c.post("/api/v1/query", json={"sql": sql, "project": project})
            r.raise_for_status()
            rows: list[list[object]] = r.json()["rows"]
            return rows

    def wait_ingested(self, timeout: float = 60) -> None:
        """Wait until the pipeline has applied everything in the log."""
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                status = c.get("/api/v1/ingest/status").json()
                if status["lag_bytes"] == 0:
                    return
                time.sleep(0.05)
        raise TimeoutError("ingest did not catch up")


def start_server(data: Path, *, extra_env: dict[str, str] | None = None, timeout: float = 60) -> Server:
    env = {**os.environ, "TOUCHLINE_ADMIN_TOKEN": TOKEN, **(extra_env or {})}
    (data / "server.json").unlink(missing_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    log = open(data / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "touchline", "serve", "--data", str(data), "--port", "0"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(data / 'server.log').read_text()[-3000:]}")
        try:
            info = json.loads((data / "server.json").read_text())
            if info["pid"] == proc.pid:
                return Server(data=data, proc=proc, url=f"http://127.0.0.1:{info['port']}")
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("server did not start")


def stop_server(server: Server) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            return server.proc.wait(60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
            raise
    return server.proc.returncode
