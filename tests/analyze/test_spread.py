"""Passes spread over threads give exactly what one thread gives."""

from __future__ import annotations

import random
from typing import Any

import pytest

from touchline.analyze import spread as spread_mod

from .conftest import make_analyzer

D = 86_400_000


def rows(n_users: int = 300, seed: int = 7) -> list[Any]:
    rng = random.Random(seed)
    out: list[Any] = []
    for u in range(1, n_users + 1):
        t = rng.randrange(0, 5 * D)
        for _ in range(rng.randrange(1, 12)):
            t += rng.randrange(0, D // 2)
            out.append((u, rng.choice("abcdx"), t, {"amount": rng.randrange(1, 90)}))
    return out


SPECS = [
    ("funnel", {"from": "1970-01-01", "to": "1970-01-20", "window": "2d",
                "steps": [{"event": "a"}, {"event": "b"}, {"event": "c"}]}),
    ("rfm", {"from": "1970-01-01", "to": "1970-01-20", "event": "a",
             "monetary": "amount"}),
]


@pytest.mark.parametrize(("kind", "spec"), SPECS, ids=[k for k, _ in SPECS])
def test_threads_change_nothing(kind: str, spec: dict[str, Any],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = rows()
    one = make_analyzer(data).run(kind, dict(spec)).data
    calls: list[tuple[int, int]] = []
    real = spread_mod.spread

    def spy(run: Any, n: int, threads: int | None = None) -> None:
        def logged(lo: int, hi: int) -> None:
            calls.append((lo, hi))
            run(lo, hi)
        real(logged, n, 3)

    monkeypatch.setattr(spread_mod, "MIN_PER_THREAD", 1)
    monkeypatch.setattr("touchline.analyze.funnel_kernel.spread", spy)
    monkeypatch.setattr("touchline.analyze.kernels.spread", spy)
    many = make_analyzer(data).run(kind, dict(spec)).data
    assert len(calls) >= 3, "the pass did not run on several ranges"
    assert many == one
