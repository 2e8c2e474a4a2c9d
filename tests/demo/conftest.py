"""A mid-size demo run shared by the demo tests (about 170,000 records, a few seconds)."""

from __future__ import annotations

from typing import Any

import pytest

from touchline.demo import generate

END_MS = 1_764_000_000_000  # 2025-11-25 00:00 in Asia/Shanghai
SEED = 20251124


@pytest.fixture(scope="session")
def records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for batch in generate(SEED, customers=2000, days=100, end_ms=END_MS):
        out.extend(batch)
    return out
