"""Event analysis: counts, unique users and property aggregates over time.

Spec::

    {"from": ..., "to": ..., "interval": "day",
     "events": [{"event": "pay", "measure": "sum", "property": "amount", "name": "GMV"},
                {"event": "submit_order", "measure": "users"}],
     "breakdown": {"property": "channel"}}

Measures: ``count``, ``users``, ``per_user`` (count / users), ``sum``, ``avg``, ``min``,
``max``, ``p50``, ``p90``, ``p99`` (the last six need ``property``). Interval: ``hour``,
``day``, ``week``, ``month`` or ``total``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from .breakdown import parse_breakdown
from .context import Context, EventSel, parse_event_sel
from .result import Result, lazy_frame
from .spec import PERIODS, opt_str, req_list

__all__ = ["MEASURES", "run"]

MEASURES = ("count", "users", "per_user", "sum", "avg", "min", "max", "p50", "p90", "p99")
_NEEDS_PROPERTY = ("sum", "avg", "min", "max", "p50", "p90", "p99")


def _measure(m: str, rows: npt.NDArray[np.int64], users: npt.NDArray[np.int32],
             vals: npt.NDArray[np.float64] | None) -> float:
    if m == "count":
        return float(len(rows))
    if m == "users":
        return float(len(np.unique(users)))
    if m == "per_user":
        u = len(np.unique(users))
        return round(len(rows) / u, 6) if u else 0.0
    assert vals is not None
    v = vals[~np.isnan(vals)]
    if not len(v):
        return 0.0 if m == "sum" else float("nan")
    if m == "sum":
        return float(v.sum())
    if m == "avg":
        return float(v.mean())
    if m == "min":
        return float(v.min())
    if m == "max":
        return float(v.max())
    return float(np.percentile(v, float(m[1:])))


def _json_num(x: float) -> float | None:
    return None if np.isnan(x) else x


def _series_spec(raw: Any, i: int) -> tuple[EventSel, str, str | None]:
    sel = parse_event_sel(raw, f"events[{i}]")
    measure, prop = "count", None
    if isinstance(raw, Mapping):
        measure = opt_str(raw, "measure", "count", f"events[{i}].", MEASURES) or "count"
        prop = raw.get("property")
        if prop is not None and not isinstance(prop, str):
            raise InvalidInput(f"events[{i}].property", "must be a property name")
    if measure in _NEEDS_PROPERTY and prop is None:
        raise InvalidInput(f"events[{i}].property", f"is required for measure {measure}")
    return sel, measure, prop


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    cache = ctx.cache
    series_specs = [_series_spec(r, i) for i, r in enumerate(req_list(spec, "events", min_len=1))]
    interval = opt_str(spec, "interval", "day", choices=(*PERIODS, "total")) or "day"
    bd = parse_breakdown(spec.get("breakdown"))
    if interval == "total":
        labels_p = [ctx.common.start.isoformat()]
        bounds = np.array([ctx.common.start_ms, ctx.common.end_ms], np.int64)
    else:
        starts, bounds = ctx.periods(interval)
        labels_p = [s.isoformat() for s in starts]
        if interval == "hour":
            labels_p = [str(int(b)) for b in bounds[:-1]]
    in_range = ctx.range_mask()
    series: list[dict[str, Any]] = []
    subsets: dict[str, npt.NDArray[np.int64]] = {}
    for i, (sel, measure, prop) in enumerate(series_specs):
        rows = np.flatnonzero(ctx.mask(sel) & in_range)
        vals = cache.prop(prop).numbers_at(rows) if prop else None
        period = np.searchsorted(bounds, cache.times[rows], side="right") - 1
        parts: list[tuple[str | None, npt.NDArray[np.bool_]]] = [(None, np.ones(len(rows), bool))]
        if bd is not None:
            if bd.on == "event":
                parts = list(bd.split(cache, cache.uidx[rows].astype(np.int64), rows,
                                      ctx.resolver, ctx.common.project))
            else:
                parts = list(bd.split(cache, cache.uidx[rows].astype(np.int64), None,
                                      ctx.resolver, ctx.common.project))
        for label, m in parts:
            sub = rows[m]
            sub_p = period[m]
            sub_v = vals[m] if vals is not None else None
            order = np.argsort(sub_p, kind="stable")
            cuts = np.searchsorted(sub_p[order], np.arange(len(labels_p) + 1))
            values = []
            for pi, pl in enumerate(labels_p):
                idx = order[cuts[pi]:cuts[pi + 1]]
                cell = f"series:{i}:{pl}" + (f"/{label}" if label is not None else "")
                subsets[cell] = sub[idx]
                v = _measure(measure, sub[idx], cache.uidx[sub[idx]],
                             sub_v[idx] if sub_v is not None else None)
                values.append({"period": pl, "value": _json_num(v), "cell": cell})
            total_cell = f"series:{i}:total" + (f"/{label}" if label is not None else "")
            subsets[total_cell] = sub
            total = _measure(measure, sub, cache.uidx[sub], sub_v)
            series.append({"name": sel.label, "measure": measure, "property": prop,
                           "breakdown": label, "values": values, "total": _json_num(total),
                           "total_cell": total_cell})
    frame = lazy_frame([
        {"name": s["name"], "measure": s["measure"], "breakdown": s["breakdown"],
         "period": v["period"], "value": v["value"]} for s in series for v in s["values"]])

    def cell_users(cell: str) -> npt.NDArray[np.int64] | None:
        rows = subsets.get(cell)
        return None if rows is None else cache.uidx[rows].astype(np.int64)

    return Result("events", ctx.common.project, {"interval": interval, "series": series},
                  {"series": frame}, cell_users, cache)
