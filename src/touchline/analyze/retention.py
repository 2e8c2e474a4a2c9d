"""Retention: of the users who started in a period, how many came back n periods later.

Spec::

    {"from": "2026-10-01", "to": "2026-10-08", "start": {"event": "submit_order"},
     "return": {"event": "submit_order"}, "period": "day", "periods": 7,
     "start_mode": "first_time" | "recurring", "window": "calendar" | "rolling",
     "retention": "on" | "on_or_after", "brackets": [[1, 1], [2, 7], [8, 30]]}

Column 0 is the cohort itself (everyone who started). The other columns are periods
1..``periods`` or the given brackets (inclusive period numbers). A ``breakdown`` repeats
the cohorts per value (an event property is read on the user's first start event in the
range, or its last with ``"attribution": "last"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from .breakdown import user_splits
from .context import Context, parse_event_sel
from .kernels import retention_pass
from .result import Result, lazy_frame, ratio
from .spec import opt_int, opt_str

__all__ = ["run"]

_PERIOD_MS = {"day": 86_400_000, "week": 7 * 86_400_000, "month": 30 * 86_400_000}


def _brackets(spec: Mapping[str, Any], periods: int) -> tuple[list[int], list[int], list[str]]:
    raw = spec.get("brackets")
    if raw is None:
        rng = list(range(1, periods + 1))
        return rng, rng, [str(n) for n in rng]
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("brackets", "must be a non-empty list of [first, last] periods")
    lo, hi, names = [], [], []
    for i, b in enumerate(raw):
        if (not isinstance(b, list) or len(b) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in b)
                or not 1 <= b[0] <= b[1] <= 1000):
            raise InvalidInput(f"brackets[{i}]", "must be [first, last] with 1 <= first <= last")
        lo.append(b[0])
        hi.append(b[1])
        names.append(str(b[0]) if b[0] == b[1] else f"{b[0]}-{b[1]}")
    return lo, hi, names


def _parse(spec: Mapping[str, Any]) -> dict[str, Any]:
    start = parse_event_sel(spec.get("start", {"event": "$any"}), "start")
    ret = parse_event_sel(spec.get("return", spec.get("start", {"event": "$any"})), "return")
    period = opt_str(spec, "period", "day", choices=("day", "week", "month")) or "day"
    periods = opt_int(spec, "periods", 7, lo=1, hi=400)
    lo, hi, names = _brackets(spec, periods)
    return {
        "start": start, "return": ret, "period": period, "periods": periods,
        "first_time": (opt_str(spec, "start_mode", "first_time",
                               choices=("first_time", "recurring")) == "first_time"),
        "rolling": opt_str(spec, "window", "calendar", choices=("calendar", "rolling"))
        == "rolling",
        "on_or_after": opt_str(spec, "retention", "on", choices=("on", "on_or_after"))
        == "on_or_after",
        "lo": np.array(lo, np.int64), "hi": np.array(hi, np.int64), "names": names,
    }


def _pass(ctx: Context, p: dict[str, Any], target: tuple[int, int] = (-1, -1),
          include: npt.NDArray[np.bool_] | None = None,
          ) -> tuple[list[Any], npt.NDArray[np.int64], npt.NDArray[np.int64],
                     npt.NDArray[np.bool_]]:
    cache = ctx.cache
    starts, bounds = ctx.periods(p["period"], after=int(p["hi"].max()) + 1)
    n_cohorts = len(ctx.periods(p["period"])[0])
    counts = np.zeros((n_cohorts, len(p["lo"])), np.int64)
    sizes = np.zeros(n_cohorts, np.int64)
    out_mask = np.zeros(cache.n_users, np.bool_)
    retention_pass(cache.ustart, cache.times, cache.codes, *ctx.selector(p["start"]),
                   *ctx.selector(p["return"]), bounds, n_cohorts, p["lo"],
                   p["hi"], p["first_time"], p["rolling"], _PERIOD_MS[p["period"]],
                   p["on_or_after"], target[0], target[1],
                   np.ones(1, bool) if include is None else include, counts, sizes, out_mask)
    return starts[:n_cohorts], counts, sizes, out_mask


def _cohorts(starts: list[Any], counts: npt.NDArray[np.int64], sizes: npt.NDArray[np.int64],
             n_cols: int, suffix: str) -> list[dict[str, Any]]:
    out = []
    for c, day in enumerate(starts):
        size = int(sizes[c])
        d = day.isoformat()
        out.append({
            "cohort": d, "users": size, "cell": f"cohort:{d}{suffix}",
            "retained": [size, *(int(x) for x in counts[c])],
            "rates": [ratio(size, size), *(ratio(int(x), size) for x in counts[c])],
            "cells": [f"cohort:{d}:{b}{suffix}" for b in range(n_cols + 1)],
        })
    return out


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    p = _parse(spec)
    starts, counts, sizes, _ = _pass(ctx, p)
    n_cols = len(p["names"])
    cohorts = _cohorts(starts, counts, sizes, n_cols, "")
    total = int(sizes.sum())
    # Averages are over all cohorts, weighted by size (recent cohorts may not have had
    # the time to reach the later columns yet).
    average = [ratio(int(counts[:, b].sum()), total) for b in range(n_cols)]
    data: dict[str, Any] = {"period": p["period"], "columns": ["0", *p["names"]],
                            "cohorts": cohorts, "users": total,
                            "average_rates": [1.0 if total else 0.0, *average]}

    def start_rows() -> npt.NDArray[np.bool_]:
        # Only users with a start event in the range can be in a cohort; an event
        # property is read on the first (or last) of those start events.
        return ctx.mask(p["start"]) & ctx.range_mask()

    splits = user_splits(ctx.cache, spec.get("breakdown"), ctx.resolver, ctx.common.project,
                         "retention", rows=start_rows,
                         among=lambda: np.unique(ctx.cache.uidx[start_rows()]).astype(np.int64))

    def part(mask: npt.NDArray[np.bool_], suffix: str) -> dict[str, Any]:
        _, bc, bs, _ = _pass(ctx, p, include=mask)
        return {"users": int(bs.sum()), "cohorts": _cohorts(starts, bc, bs, n_cols, suffix)}

    if splits:
        data["breakdown"] = splits.parts(part)
    frame = lazy_frame(
        [{"cohort": c["cohort"], "users": c["users"],
          **{name: c["retained"][b + 1] for b, name in enumerate(p["names"])}} for c in cohorts])
    names = [s.isoformat() for s in starts]

    def cell_users(cell: str) -> npt.NDArray[np.int64] | None:
        opened = splits.open(cell)
        if opened is None:
            return None
        base, mask = opened
        parts = base.split(":")
        if parts[0] != "cohort" or len(parts) not in (2, 3) or parts[1] not in names:
            return None
        c = names.index(parts[1])
        try:
            b = int(parts[2]) - 1 if len(parts) == 3 else -1  # column 0 is the cohort
        except ValueError:
            return None
        if not -1 <= b < n_cols:
            return None
        return np.flatnonzero(_pass(ctx, p, (c, b), mask)[3])

    return Result("retention", ctx.common.project, data, {"cohorts": frame}, cell_users,
                  ctx.cache)
