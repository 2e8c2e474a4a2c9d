"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serverproc import Server, start_server, stop_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A real `touchline serve` process with a fresh data directory."""
    s = start_server(tmp_path / "data")
    try:
        yield s
    finally:
        stop_server(s)
