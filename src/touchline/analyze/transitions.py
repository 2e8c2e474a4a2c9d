"""Layer transitions: how users moved between the layers of a model from one date to another.

Spec::

    {"from": ..., "to": ..., "dates": ["2026-10-01", "2026-11-01"],
     "model": {"kind": "rfm", "event": {"event": "pay"}, "monetary": "amount",
               "lookback": "90d"}}

``model.kind`` is ``rfm`` (scored over the ``lookback`` before each date, default 90
days) or ``lifecycle_stages`` (its stage rules evaluated as of each date). Users with
no layer on a date are in ``(none)``. Each cell opens as a user list, and so do the
row and column totals (``before:LAYER``, ``after:LAYER``). A ``breakdown`` repeats the
matrix per value; an event property is read on the user's first (or last) event before
the second date.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from ..errors import InvalidInput
from . import rfm, stages
from .breakdown import user_splits
from .context import Context, EventSel
from .result import Result, lazy_frame
from .spec import local_ms, opt_str, parse_date, parse_duration, req_list, req_mapping

__all__ = ["NONE_LAYER", "run"]

NONE_LAYER = "(none)"


def _layers(ctx: Context, model: Mapping[str, Any], kind: str, as_of_ms: int,
            ) -> tuple[list[str], npt.NDArray[np.int64]]:
    if kind == "rfm":
        lookback = parse_duration(model.get("lookback", "90d"), "model.lookback")
        return rfm.layers_as_of(ctx, model, as_of_ms - lookback, as_of_ms)
    return stages.stages_as_of(ctx, model, as_of_ms)


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    model = req_mapping(spec.get("model"), "model")
    kind = opt_str(model, "kind", None, "model.", ("rfm", "lifecycle_stages"))
    if kind is None:
        raise InvalidInput("model.kind", "is required: rfm or lifecycle_stages")
    raw_dates = req_list(spec, "dates", min_len=2)
    if len(raw_dates) != 2:
        raise InvalidInput("dates", "must be two dates [before, after]")
    d1, d2 = (parse_date(d, f"dates[{i}]") for i, d in enumerate(raw_dates))
    if d2 <= d1:
        raise InvalidInput("dates", "the second date must be after the first")
    names, a = _layers(ctx, model, kind, local_ms(d1, ctx.common.tz))
    _, b = _layers(ctx, model, kind, local_ms(d2, ctx.common.tz))
    labels = [*names, NONE_LAYER]
    none = len(names)
    a = np.where(a < 0, none, a)
    b = np.where(b < 0, none, b)
    either = (a != none) | (b != none)
    k = len(labels)
    d2_ms = local_ms(d2, ctx.common.tz)

    def body(mask: npt.NDArray[np.bool_] | None, suffix: str) -> dict[str, Any]:
        keep = either if mask is None else either & mask
        grid = np.bincount(a[keep] * k + b[keep], minlength=k * k).reshape(k, k)
        cells = [{"from": labels[i], "to": labels[j], "users": int(grid[i, j]),
                  "cell": f"cell:{labels[i]}:{labels[j]}{suffix}"}
                 for i in range(k) for j in range(k) if grid[i, j]]
        return {"users": int(np.count_nonzero(keep)), "users_cell": f"users{suffix}",
                "matrix": grid.tolist(), "cells": cells,
                "before": {labels[i]: int(grid[i].sum()) for i in range(k)},
                "after": {labels[j]: int(grid[:, j].sum()) for j in range(k)},
                "before_cells": {lab: f"before:{lab}{suffix}" for lab in labels},
                "after_cells": {lab: f"after:{lab}{suffix}" for lab in labels}}

    def deciding() -> npt.NDArray[np.bool_]:
        return ctx.mask(EventSel(("$any",), None, "any")) & (ctx.cache.times < d2_ms)

    data = {"model": kind, "dates": [d1.isoformat(), d2.isoformat()], "layers": labels,
            **body(None, "")}
    splits = user_splits(ctx.cache, spec.get("breakdown"), ctx.resolver, ctx.common.project,
                         "transitions", rows=deciding, among=lambda: np.flatnonzero(either))
    if splits:
        data["breakdown"] = splits.parts(body)
    frame = lazy_frame(np.array(data["matrix"]), index=pd.Index(labels, name="from"),
                       columns=pd.Index(labels, name="to"))

    def cell_users(cell: str) -> npt.NDArray[np.int64] | None:
        opened = splits.open(cell)
        if opened is None:
            return None
        base, mask = opened
        keep = either if mask is None else either & mask
        if base == "users":
            return np.flatnonzero(keep)
        kind_, _, rest = base.partition(":")
        if kind_ in ("before", "after") and rest in labels:
            side = a if kind_ == "before" else b
            return np.flatnonzero(keep & (side == labels.index(rest)))
        if kind_ != "cell":
            return None
        # Layer names may hold colons: find the split that names two layers.
        for at in range(len(rest)):
            if rest[at] == ":" and rest[:at] in labels and rest[at + 1:] in labels:
                i, j = labels.index(rest[:at]), labels.index(rest[at + 1:])
                return np.flatnonzero(keep & (a == i) & (b == j))
        return None

    return Result("transitions", ctx.common.project, data, {"matrix": frame}, cell_users,
                  ctx.cache)
