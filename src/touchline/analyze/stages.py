"""Lifecycle stages: rule-defined stages (prospect, new member, regular, ...) as of a date.

Spec::

    {"from": ..., "to": ..., "as_of": "2026-11-01",
     "metrics": {"orders_90d": {"event": "pay", "agg": "count", "within": "90d"},
                 "spent_90d": {"event": "pay", "agg": "sum", "property": "amount",
                               "within": "90d"}},
     "stages": [{"name": "churned", "when": [{"metric": "days_since_last_seen", "op": ">",
                                              "value": 60}]},
                {"name": "high value", "when_any": [...]}, ...]}

Metrics are computed per user over the events before ``as_of`` (default ``to``),
optionally only the last ``within``. Aggregates: ``count``, ``sum`` (of ``property``),
``days_since_last``, ``days_since_first``. Built in: ``events``,
``days_since_first_seen``, ``days_since_last_seen``. Stages are tried in order
(``when``: all hold, ``when_any``: one holds, ``where``: profile filters); the first
that matches wins, else ``other``. Users with no event before ``as_of`` are not staged.
The spec's ``where`` applies to every event read, the built-in metrics' included. A
``breakdown`` splits the staged users; an event property is read on the user's first
(or last) event before ``as_of``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from .breakdown import user_splits
from .context import Context, EventSel, parse_event_sel
from .filters import Filter, parse_filter, row_mask, user_mask
from .result import Result, lazy_frame
from .spec import local_ms, opt_str, parse_date, parse_duration, req_mapping

__all__ = ["DEFAULT_METRICS", "DEFAULT_STAGES", "run", "stages_as_of"]

DAY_MS = 86_400_000
OTHER = "other"
AGGS = ("count", "sum", "days_since_last", "days_since_first")
OPS = ("=", "!=", ">", ">=", "<", "<=")
DEFAULT_METRICS: dict[str, dict[str, Any]] = {
    "orders": {"event": "pay", "agg": "count"},
    "orders_90d": {"event": "pay", "agg": "count", "within": "90d"},
    "spent_90d": {"event": "pay", "agg": "sum", "property": "amount", "within": "90d"},
    "days_since_first_order": {"event": "pay", "agg": "days_since_first"},
}
DEFAULT_STAGES: tuple[dict[str, Any], ...] = (
    {"name": "churned", "when": [{"metric": "days_since_last_seen", "op": ">", "value": 60}]},
    {"name": "silent", "when": [{"metric": "days_since_last_seen", "op": ">", "value": 30}]},
    {"name": "prospect", "when": [{"metric": "orders", "op": "=", "value": 0}]},
    {"name": "new member", "when": [{"metric": "days_since_first_order", "op": "<=",
                                     "value": 30}]},
    {"name": "high value", "when_any": [{"metric": "orders_90d", "op": ">=", "value": 8},
                                        {"metric": "spent_90d", "op": ">=", "value": 1500}]},
    {"name": "regular", "when": [{"metric": "orders_90d", "op": ">=", "value": 2}]},
)
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Metric:
    sel: EventSel
    agg: str
    prop: str | None
    within_ms: int | None


@dataclass(frozen=True)
class Stage:
    name: str
    all_of: tuple[tuple[str, str, float], ...]
    any_of: tuple[tuple[str, str, float], ...]
    where: Filter | None


def _metric(name: str, raw: Any) -> Metric:
    field = f"metrics.{name}"
    raw = req_mapping(raw, field)
    agg = opt_str(raw, "agg", "count", field + ".", AGGS) or "count"
    prop = raw.get("property")
    if agg == "sum" and not isinstance(prop, str):
        raise InvalidInput(f"{field}.property", "is required for agg sum")
    within = parse_duration(raw["within"], f"{field}.within") if "within" in raw else None
    return Metric(parse_event_sel(raw, field), agg, prop, within)


def _conds(raw: Any, field: str, metrics: set[str]) -> tuple[tuple[str, str, float], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidInput(field, "must be a list of {metric, op, value}")
    out = []
    for i, c in enumerate(raw):
        c = req_mapping(c, f"{field}[{i}]")
        if c.get("metric") not in metrics:
            raise InvalidInput(f"{field}[{i}].metric", "must name a metric: " + ", ".join(
                sorted(metrics)))
        if c.get("op", "=") not in OPS:
            raise InvalidInput(f"{field}[{i}].op", "must be one of " + ", ".join(OPS))
        v = c.get("value")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InvalidInput(f"{field}[{i}].value", "must be a number")
        out.append((str(c["metric"]), str(c.get("op", "=")), float(v)))
    return tuple(out)


def parse(spec: Mapping[str, Any]) -> tuple[dict[str, Metric], tuple[Stage, ...]]:
    raw_metrics = spec.get("metrics", DEFAULT_METRICS)
    raw_metrics = req_mapping(raw_metrics, "metrics")
    metrics = {str(k): _metric(str(k), v) for k, v in raw_metrics.items()}
    names = {*metrics, "events", "days_since_first_seen", "days_since_last_seen"}
    raw_stages = spec.get("stages", list(DEFAULT_STAGES))
    if not isinstance(raw_stages, list) or not raw_stages:
        raise InvalidInput("stages", "must be a non-empty list")
    stages = []
    for i, s in enumerate(raw_stages):
        s = req_mapping(s, f"stages[{i}]")
        name = s.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"stages[{i}].name", "is required")
        stages.append(Stage(name, _conds(s.get("when"), f"stages[{i}].when", names),
                            _conds(s.get("when_any"), f"stages[{i}].when_any", names),
                            parse_filter(s.get("where"), f"stages[{i}].where")))
    return metrics, tuple(stages)


def _history(ctx: Context, as_of_ms: int) -> npt.NDArray[np.bool_]:
    """The events a user's stage is read from: all before ``as_of`` that pass the
    spec's ``where`` (the built-in metrics and who is staged at all follow it too)."""
    before: npt.NDArray[np.bool_] = ctx.cache.times < as_of_ms
    gw = row_mask(ctx.cache, ctx.global_where)
    return before if gw is None else before & gw


def _values(ctx: Context, metrics: dict[str, Metric], as_of_ms: int,
            ) -> tuple[I64, dict[str, F64]]:
    cache = ctx.cache
    before = _history(ctx, as_of_ms)
    seen = np.flatnonzero(np.bincount(cache.uidx[before], minlength=cache.n_users) > 0)
    out: dict[str, F64] = {}

    def first_last(rows: I64) -> tuple[F64, F64]:
        first = np.full(cache.n_users, np.nan)
        last = np.full(cache.n_users, np.nan)
        if len(rows):
            u = cache.uidx[rows]
            # Rows are in (user, time) order: assign in reverse so the first one wins.
            first[u[::-1]] = cache.times[rows[::-1]]
            last[u] = cache.times[rows]
        return (as_of_ms - first) / DAY_MS, (as_of_ms - last) / DAY_MS

    all_rows = np.flatnonzero(before)
    out["events"] = np.bincount(cache.uidx[all_rows], minlength=cache.n_users).astype(float)
    out["days_since_first_seen"], out["days_since_last_seen"] = first_last(all_rows)
    for name, m in metrics.items():
        sel = ctx.mask(m.sel) & before
        if m.within_ms is not None:
            sel &= cache.times >= as_of_ms - m.within_ms
        rows = np.flatnonzero(sel)
        u = cache.uidx[rows]
        if m.agg == "count":
            out[name] = np.bincount(u, minlength=cache.n_users).astype(float)
        elif m.agg == "sum":
            assert m.prop is not None
            vals = np.nan_to_num(cache.prop(m.prop).numbers_at(rows))
            out[name] = np.bincount(u, weights=vals, minlength=cache.n_users).astype(float)
        else:
            first, last = first_last(rows)
            out[name] = first if m.agg == "days_since_first" else last
    return seen, {k: v[seen] for k, v in out.items()}


def _holds(values: dict[str, F64], cond: tuple[str, str, float]) -> npt.NDArray[np.bool_]:
    name, op, v = cond
    x = values[name]
    with np.errstate(invalid="ignore"):
        res: npt.NDArray[np.bool_] = {
            "=": x == v, "!=": x != v, ">": x > v, ">=": x >= v, "<": x < v, "<=": x <= v,
        }[op]
    return res


def stages_as_of(ctx: Context, spec: Mapping[str, Any], as_of_ms: int) -> tuple[list[str], I64]:
    """Stage names and, per user of the cache, its stage index (-1: no event yet)."""
    metrics, stages = parse(spec)
    users, values = _values(ctx, metrics, as_of_ms)
    names = [s.name for s in stages] + [OTHER]
    lay = np.full(len(users), len(stages), np.int64)
    free = np.ones(len(users), bool)
    for i, s in enumerate(stages):
        ok = free.copy()
        for c in s.all_of:
            ok &= _holds(values, c)
        if s.any_of:
            anym = np.zeros(len(users), bool)
            for c in s.any_of:
                anym |= _holds(values, c)
            ok &= anym
        um = user_mask(ctx.cache, s.where)
        if um is not None:
            ok &= um[users]
        lay[ok] = i
        free &= ~ok
    out = np.full(ctx.cache.n_users, -1, np.int64)
    out[users] = lay
    return names, out


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    as_of = parse_date(spec["as_of"], "as_of") if "as_of" in spec else ctx.common.end
    as_of_ms = local_ms(as_of, ctx.common.tz)
    names, lay = stages_as_of(ctx, spec, as_of_ms)
    staged = np.flatnonzero(lay >= 0)

    def body(mask: npt.NDArray[np.bool_] | None, suffix: str) -> dict[str, Any]:
        keep = staged if mask is None else staged[mask[staged]]
        counts = np.bincount(lay[keep], minlength=len(names))
        return {"users": len(keep), "users_cell": f"users{suffix}",
                "stages": [{"stage": n, "users": int(counts[i]), "cell": f"stage:{n}{suffix}"}
                           for i, n in enumerate(names)]}

    data = {"as_of": as_of.isoformat(), **body(None, "")}
    splits = user_splits(ctx.cache, spec.get("breakdown"), ctx.resolver, ctx.common.project,
                         "lifecycle_stages", rows=lambda: _history(ctx, as_of_ms), among=lambda: staged)
    if splits:
        data["breakdown"] = splits.parts(body)

    def cell_users(cell: str) -> I64 | None:
        opened = splits.open(cell)
        if opened is None:
            return None
        base, mask = opened
        pick = lay >= 0 if mask is None else mask & (lay >= 0)
        if base == "users":
            return np.flatnonzero(pick)
        kind, _, name = base.partition(":")
        if kind != "stage" or name not in names:
            return None
        return np.flatnonzero(pick & (lay == names.index(name)))

    return Result("lifecycle_stages", ctx.common.project, data,
                  {"stages": lazy_frame(data["stages"])}, cell_users, ctx.cache)
