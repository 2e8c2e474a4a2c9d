"""Lifecycle: per period, how many users are new, returning, resurrecting or dormant.

Spec: ``{"from": ..., "to": ..., "period": "day" | "week" | "month",
"event": {"event": "pay"}}`` (any event when ``event`` is left out). New: first active
period ever; returning: active this period and the one before; resurrecting: active
now, not in the period before, but at some time earlier; dormant: active in the period
before, not in this one. A ``breakdown`` repeats the periods per value (an event property
is read on the user's first active event in the range, or its last with ``"attribution":
"last"``; users active only before the range are ``(none)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from .breakdown import user_splits
from .context import Context, parse_event_sel
from .kernels import lifecycle_pass
from .result import Result, lazy_frame
from .spec import opt_str

__all__ = ["STATUSES", "run"]

STATUSES = ("new", "returning", "resurrecting", "dormant")


def _pass(ctx: Context, spec: Mapping[str, Any], target: tuple[int, int] = (-1, -1),
          include: npt.NDArray[np.bool_] | None = None,
          ) -> tuple[list[Any], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    period = opt_str(spec, "period", "day", choices=("day", "week", "month")) or "day"
    sel = parse_event_sel(spec.get("event", {"event": "$any"}), "event")
    starts, bounds = ctx.periods(period, before=1)
    n_periods = len(starts) - 1
    cache = ctx.cache
    counts = np.zeros((n_periods + 2, 4), np.int64)
    out = np.zeros(cache.n_users, np.bool_)
    lifecycle_pass(cache.ustart, cache.times, cache.codes, *ctx.selector(sel), bounds, n_periods,
                   target[0], target[1], np.ones(1, bool) if include is None else include,
                   counts, out)
    return starts[1:], counts[1:n_periods + 1], out


def _rows(starts: list[Any], counts: npt.NDArray[np.int64], suffix: str,
          ) -> list[dict[str, Any]]:
    rows = []
    for i, day in enumerate(starts):
        d = day.isoformat()
        rows.append({"period": d, **{s: int(counts[i, j]) for j, s in enumerate(STATUSES)},
                     "cells": {s: f"{s}:{d}{suffix}" for s in STATUSES}})
    return rows


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    starts, counts, _ = _pass(ctx, spec)
    rows = _rows(starts, counts, "")
    data: dict[str, Any] = {"periods": rows}
    sel = parse_event_sel(spec.get("event", {"event": "$any"}), "event")
    splits = user_splits(ctx.cache, spec.get("breakdown"), ctx.resolver, ctx.common.project,
                         "lifecycle", rows=lambda: ctx.mask(sel) & ctx.range_mask())
    if splits:
        data["breakdown"] = splits.parts(lambda mask, suffix: {"periods": _rows(
            starts, _pass(ctx, spec, include=mask)[1], suffix)})
    names = [s.isoformat() for s in starts]

    def cell_users(cell: str) -> npt.NDArray[np.int64] | None:
        opened = splits.open(cell)
        if opened is None:
            return None
        base, mask = opened
        status, _, day = base.partition(":")
        if status not in STATUSES or day not in names:
            return None
        target = (names.index(day) + 1, STATUSES.index(status))
        return np.flatnonzero(_pass(ctx, spec, target, mask)[2])

    frame = lazy_frame([{k: v for k, v in r.items() if k != "cells"} for r in rows])
    return Result("lifecycle", ctx.common.project, data, {"periods": frame},
                  cell_users, ctx.cache)
