"""The full-size demo: volume, span and speed (about 12 s of CPU: marked slow)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from conftest import END_MS
from touchline.demo import generate
from touchline.demo.calendar import DAY_MS


@pytest.mark.slow
def test_default_size_volume_span_and_speed() -> None:
    kinds: Counter[str] = Counter()
    members: set[str] = set()
    anonymous: set[str] = set()
    first = last = None
    cpu = time.process_time()
    for batch in generate(1, end_ms=END_MS):
        for r in batch:
            kinds[r["type"]] += 1
            if r["type"] == "track":
                (members if r["properties"].get("$is_login_id") else anonymous).add(
                    r["distinct_id"])
        first = batch[0]["time"] if first is None else first
        last = batch[-1]["time"]
    # CPU time, not wall time: the test machine is shared.
    assert time.process_time() - cpu < 30
    assert kinds["track"] >= 1_000_000
    assert len(members) + len(anonymous) >= 20_000
    assert len(members) >= 15_000
    assert first is not None and last is not None
    assert last < END_MS and last - first >= 90 * DAY_MS
