"""Distribution: how many times each user did something in the range, bucketed.

Spec: ``{"event": {"event": "submit_order"}, "buckets": [1, 2, 3, 5, 10]}``: bucket
edges are lower bounds (``[1, 2)``, ``[2, 3)`` ... ``[10, inf)``). With ``"property":
"amount"`` the per-user sum of that property is bucketed instead of the count. A
``breakdown`` repeats the result per value (an event property is read on the user's
first counted event, or its last with ``"attribution": "last"``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from .breakdown import bucket_cells, user_splits
from .context import Context, parse_event_sel
from .result import Result, lazy_frame, pct

__all__ = ["DEFAULT_BUCKETS", "bucket_rows", "run"]

Bool = npt.NDArray[np.bool_]
DEFAULT_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 50, 100)


def parse_edges(raw: Any, default: tuple[float, ...], field: str = "buckets") -> list[float]:
    edges = list(default) if raw is None else raw
    if (not isinstance(edges, list) or not edges
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in edges)
            or any(b <= a for a, b in itertools.pairwise(edges))):
        raise InvalidInput(field, "must be a non-empty, increasing list of numbers")
    return [float(x) for x in edges]


def bucket_rows(values: npt.NDArray[Any], edges: list[float], unit: str = "",
                ) -> tuple[list[dict[str, Any]], npt.NDArray[np.int64]]:
    """Bucket rows ``[edge_i, edge_i+1)`` and the bucket index of each value (-1 below)."""
    idx = np.searchsorted(np.array(edges), values, side="right") - 1
    out = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else None
        out.append({"from": lo, "to": hi, "users": int(np.count_nonzero(idx == i)),
                    "cell": f"bucket:{i}", **({"unit": unit} if unit else {})})
    return out, idx


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    cache = ctx.cache
    sel = parse_event_sel(spec.get("event"), "event")
    prop = spec.get("property")
    if prop is not None and not isinstance(prop, str):
        raise InvalidInput("property", "must be a property name")
    in_sel = ctx.mask(sel) & ctx.range_mask()
    rows = np.flatnonzero(in_sel)
    u = cache.uidx[rows]
    if prop is None:
        per_user = np.bincount(u, minlength=cache.n_users).astype(np.float64)
        edges = parse_edges(spec.get("buckets"), DEFAULT_BUCKETS)
    else:
        vals = np.nan_to_num(cache.prop(prop).numbers_at(rows))
        per_user = np.bincount(u, weights=vals, minlength=cache.n_users).astype(np.float64)
        edges = parse_edges(spec.get("buckets"), (0, 10, 50, 100, 200, 500, 1000, 5000))
    users = np.unique(u).astype(np.int64)
    idx = bucket_rows(per_user[users], edges)[1]

    def body(mask: Bool | None, suffix: str) -> dict[str, Any]:
        keep = users if mask is None else users[mask[users]]
        values = per_user[keep]
        buckets = bucket_rows(values, edges)[0]
        for b in buckets:
            b["cell"] += suffix
        return {"users": len(keep), "users_cell": f"users{suffix}", "buckets": buckets,
                "average": float(values.mean()) if len(values) else None,
                "median": pct(values, 50), "p90": pct(values, 90)}

    data = body(None, "")
    splits = user_splits(cache, spec.get("breakdown"), ctx.resolver, ctx.common.project,
                         "distribution", rows=lambda: in_sel, among=lambda: users)
    if splits:
        data["breakdown"] = splits.parts(body)

    cell_users = bucket_cells(splits, users, idx, len(edges))

    return Result("distribution", ctx.common.project, data,
                  {"buckets": lazy_frame(data["buckets"])}, cell_users, cache)
