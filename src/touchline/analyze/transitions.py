"""Layer transitions: how users moved between the layers of a model from one date to another.

Spec::

    {"from": ..., "to": ..., "dates": ["2026-10-01", "2026-11-01"],
     "model": {"kind": "rfm", "event": {"event": "pay"}, "monetary": "amount",
               "lookback": "90d"}}

``model.kind`` is ``rfm`` (scored over the ``lookback`` before each date, default 90
days) or ``lifecycle_stages`` (its stage rules evaluated as of each date). Users with
no layer on a date are in ``(none)``. Each cell opens as a user list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from ..errors import InvalidInput
from . import rfm, stages
from .context import Context
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
    grid = np.bincount(a[either] * k + b[either], minlength=k * k).reshape(k, k)
    cells = [{"from": labels[i], "to": labels[j], "users": int(grid[i, j]),
              "cell": f"cell:{labels[i]}:{labels[j]}"}
             for i in range(k) for j in range(k) if grid[i, j]]
    data = {"model": kind, "dates": [d1.isoformat(), d2.isoformat()], "layers": labels,
            "matrix": grid.tolist(), "cells": cells,
            "before": {labels[i]: int(grid[i].sum()) for i in range(k)},
            "after": {labels[j]: int(grid[:, j].sum()) for j in range(k)}}
    frame = lazy_frame(grid, index=pd.Index(labels, name="from"),
                         columns=pd.Index(labels, name="to"))

    def cell_users(cell: str) -> npt.NDArray[np.int64] | None:
        parts = cell.split(":")
        if parts[0] != "cell" or len(parts) != 3 or parts[1] not in labels or parts[2] not in labels:
            return None
        i, j = labels.index(parts[1]), labels.index(parts[2])
        return np.flatnonzero(either & (a == i) & (b == j))

    return Result("transitions", ctx.common.project, data, {"matrix": frame}, cell_users,
                  ctx.cache)
