"""Interval: the time between two events per user, as percentiles and a histogram.

Spec: ``{"start": {"event": "submit_order"}, "end": {"event": "food_ready"},
"mode": "first" | "each", "buckets": ["1m", "5m", "15m", "1h", "1d"]}``. ``first``
measures from each user's first start in the range to the next end; ``each`` pairs
every start with the next end after it (with start = end: the gaps between repeats).
A ``breakdown`` splits the users (an event property is read on the user's first start
event in the range, or its last with ``"attribution": "last"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from .breakdown import bucket_cells, user_splits
from .context import Context, parse_event_sel
from .distribution import bucket_rows
from .kernels import interval_pass
from .result import Result, lazy_frame, pct
from .spec import opt_str, parse_duration

__all__ = ["run"]

Bool = npt.NDArray[np.bool_]
DEFAULT = ("1m", "5m", "15m", "30m", "1h", "3h", "12h", "1d", "3d", "7d", "30d")


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    cache = ctx.cache
    a = parse_event_sel(spec.get("start"), "start")
    b = parse_event_sel(spec.get("end"), "end")
    each = opt_str(spec, "mode", "first", choices=("first", "each")) == "each"
    raw = spec.get("buckets", list(DEFAULT))
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("buckets", "must be a non-empty list of durations")
    edges = [0.0, *sorted({float(parse_duration(x, f"buckets[{i}]")) for i, x in enumerate(raw)})]
    out_ms = np.empty(cache.n, np.int64)
    out_user = np.empty(cache.n, np.int64)
    is_a = ctx.mask(a)
    n = interval_pass(cache.ustart, cache.times, is_a, ctx.mask(b), ctx.common.start_ms,
                      ctx.common.end_ms, each, out_ms, out_user)
    ms, users = out_ms[:n], out_user[:n]
    idx = bucket_rows(ms, edges, "ms")[1]

    def body(mask: Bool | None, suffix: str) -> dict[str, Any]:
        pick = np.ones(len(users), bool) if mask is None else mask[users]
        sub = ms[pick]
        buckets = bucket_rows(sub, edges, "ms")[0]
        for bk in buckets:
            bk["intervals"] = bk.pop("users")
            bk["cell"] += suffix
        return {"intervals": len(sub), "users": len(np.unique(users[pick])),
                "users_cell": f"users{suffix}",
                "average_ms": float(sub.mean()) if len(sub) else None,
                "percentiles_ms": {f"p{q}": pct(sub, q) for q in (10, 25, 50, 75, 90, 99)},
                "buckets": buckets}

    data = body(None, "")
    splits = user_splits(cache, spec.get("breakdown"), ctx.resolver, ctx.common.project,
                         "interval", rows=lambda: is_a & ctx.range_mask(),
                         among=lambda: np.unique(users))
    if splits:
        data["breakdown"] = splits.parts(body)

    cell_users = bucket_cells(splits, users, idx, len(edges))

    return Result("interval", ctx.common.project, data,
                  {"buckets": lazy_frame(data["buckets"])}, cell_users, cache)
