"""Funnels against ClickHouse's windowFunnel (through chDB) on random data where no two
steps match the same event: the counts must be identical."""

from __future__ import annotations

import numpy as np
import pytest

from touchline.analyze.engine import Analyzer
from touchline.analyze.source import DuckDBEventSource

from .conftest import make_conn

chdb = pytest.importorskip("chdb")

D = 86_400_000


def _window_funnel(rows: list[tuple[int, str, int]], steps: list[str], window_ms: int,
                   t_from: int, t_to: int) -> list[int]:
    values = ", ".join(f"({u}, '{e}', {t})" for u, e, t in rows)
    # Step 1 must fall in [from, to); later steps up to the window after `to`.
    conds = ", ".join(f"event = '{s}'" + (f" AND t < {t_to}" if i == 0 else "")
                      for i, s in enumerate(steps))
    sql = f"""
    SELECT level, count() FROM (
      SELECT user, windowFunnel({window_ms})(t, {conds}) AS level
      FROM (SELECT * FROM values('user UInt64, event String, t UInt64', {values}))
      WHERE t >= {t_from} AND t <= {t_to + window_ms}
      GROUP BY user)
    WHERE level > 0 GROUP BY level"""
    hist: dict[int, int] = {}
    for line in str(chdb.query(sql, "CSV")).split():
        level, n = line.split(",")
        hist[int(level)] = int(n)
    return [sum(v for k, v in hist.items() if k > j) for j in range(len(steps))]


@pytest.mark.parametrize("seed", range(6))
def test_counts_equal_window_funnel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_events = 3000
    events = [f"e{i}" for i in range(6)]
    users = rng.integers(1, 200, n_events)
    times = rng.integers(0, 3 * D, n_events)  # ms resolution: ties are rare but possible
    if seed % 2:
        times = times // 60_000 * 60_000  # minute resolution: many ties
    names = rng.choice(events, n_events)
    rows = [(int(u), str(e), int(t)) for u, e, t in zip(users, names, times, strict=True)]
    n_steps = int(rng.integers(2, 6))
    steps = [str(s) for s in rng.choice(events, n_steps, replace=False)]
    window = int(rng.integers(1, 24)) * 3_600_000
    an = Analyzer(DuckDBEventSource(make_conn(rows)), time_zone="UTC")
    ours = an.run("funnel", {"from": "1970-01-01", "to": "1970-01-03", "steps": steps,
                             "window": f"{window // 1000}s"}).to_json()
    # windowFunnel keeps the input order for equal timestamps; feed it in step order,
    # which is Touchline's rule for simultaneous events.
    order = {s: i for i, s in enumerate(steps)}
    rows.sort(key=lambda r: (r[0], r[2], order.get(r[1], len(steps))))
    expected = _window_funnel(rows, steps, window, 0, 2 * D)
    assert [s["users"] for s in ours["steps"]] == expected
