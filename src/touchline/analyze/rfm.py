"""RFM: recency, frequency and monetary scores, and named layers from score rules.

Spec::

    {"from": "2026-08-01", "to": "2026-11-01", "event": {"event": "pay"},
     "monetary": "amount", "scoring": "quantiles", "bins": 5,
     "thresholds": {"r": [7, 14, 30, 60], "f": [2, 3, 5, 10], "m": [50, 100, 300, 1000]},
     "layers": [{"name": "champions", "r": [4, 5], "f": [4, 5]}, ...], "as_of": "2026-11-01"}

Recency is days from the user's last event to ``as_of`` (default ``to``); frequency
the number of events in ``[from, as_of)``; monetary the sum of the ``monetary``
property (the frequency when none is named). Scores run 1 (worst) to ``bins`` (best).
Layers are tried in order; the first whose score ranges all hold wins, else ``others``.
A ``breakdown`` splits the scored users (scores stay those of the whole base); an event
property is read on the user's first (or last) counted event in ``[from, as_of)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from ..errors import InvalidInput
from .breakdown import user_splits
from .context import Context, EventSel, parse_event_sel
from .kernels import rfm_pass
from .result import Result, i64, lazy_frame
from .spec import local_ms, opt_int, opt_str, parse_date, req_mapping

__all__ = ["DEFAULT_LAYERS", "RfmSpec", "layers_as_of", "parse", "run", "scores"]

DAY_MS = 86_400_000
OTHERS = "others"
DEFAULT_LAYERS: tuple[dict[str, Any], ...] = (
    {"name": "champions", "r": [4, 5], "f": [4, 5]},
    {"name": "loyal", "r": [3, 5], "f": [3, 5]},
    {"name": "promising", "r": [4, 5], "f": [1, 2]},
    {"name": "at risk", "r": [1, 2], "f": [3, 5]},
    {"name": "hibernating", "r": [1, 2], "f": [1, 2]},
)
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Layer:
    name: str
    ranges: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class RfmSpec:
    event: EventSel
    monetary: str | None
    scoring: str
    bins: int
    thresholds: dict[str, list[float]]
    layers: tuple[Layer, ...]


def _layer(raw: Any, i: int, bins: int) -> Layer:
    raw = req_mapping(raw, f"layers[{i}]")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"layers[{i}].name", "is required")
    ranges: dict[str, tuple[int, int]] = {}
    for key in ("r", "f", "m"):
        v = raw.get(key)
        if v is None:
            continue
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v, v]
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                or not 1 <= v[0] <= v[1] <= bins):
            raise InvalidInput(f"layers[{i}].{key}", f"must be a score or [low, high] within 1..{bins}")
        ranges[key] = (v[0], v[1])
    return Layer(name, ranges)


def parse(spec: Mapping[str, Any]) -> RfmSpec:
    event = parse_event_sel(spec.get("event"), "event")
    monetary = spec.get("monetary")
    if monetary is not None and not isinstance(monetary, str):
        raise InvalidInput("monetary", "must be a property name")
    scoring = opt_str(spec, "scoring", "quantiles", choices=("quantiles", "thresholds"))
    thresholds: dict[str, list[float]] = {}
    if scoring == "thresholds":
        raw = req_mapping(spec.get("thresholds"), "thresholds")
        sizes = set()
        for key in ("r", "f", "m"):
            v = raw.get(key)
            if (not isinstance(v, list) or not v
                    or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
                    or any(b <= a for a, b in itertools.pairwise(v))):
                raise InvalidInput(f"thresholds.{key}", "must be an increasing list of numbers")
            thresholds[key] = [float(x) for x in v]
            sizes.add(len(v))
        if len(sizes) != 1:
            raise InvalidInput("thresholds", "r, f and m must have as many thresholds each")
        bins = sizes.pop() + 1
    else:
        bins = opt_int(spec, "bins", 5, lo=2, hi=10)
    raw_layers = spec.get("layers", list(DEFAULT_LAYERS) if bins == 5 else [])
    if not isinstance(raw_layers, list):
        raise InvalidInput("layers", "must be a list")
    layers = tuple(_layer(r, i, bins) for i, r in enumerate(raw_layers))
    return RfmSpec(event, monetary, scoring or "quantiles", bins, thresholds, layers)


def _quantile_score(x: F64, bins: int, higher_is_better: bool) -> I64:
    if not len(x):
        return np.empty(0, np.int64)
    edges = np.quantile(x, np.arange(1, bins) / bins)
    # A value equal to an edge gets the worse score: many users share the smallest
    # frequency, and that alone must not lift them into the middle scores.
    idx = np.searchsorted(edges, x, side="left" if higher_is_better else "right")
    score = idx + 1 if higher_is_better else bins - idx
    return np.clip(score, 1, bins).astype(np.int64)


def _threshold_score(x: F64, th: list[float], higher_is_better: bool) -> I64:
    bins = len(th) + 1
    if higher_is_better:
        return (1 + np.searchsorted(th, x, side="right")).astype(np.int64)
    return (bins - np.searchsorted(th, x, side="left")).astype(np.int64)


def scores(ctx: Context, rs: RfmSpec, from_ms: int, as_of_ms: int,
           ) -> tuple[I64, F64, F64, F64, I64, I64, I64]:
    """Users (dense indexes) with at least one event, their R (days), F, M and scores."""
    cache = ctx.cache
    nu = cache.n_users
    last, freq, money = np.empty(nu, np.int64), np.empty(nu, np.int64), np.empty(nu)
    # Plain selections are decided per event code; filtered ones need a row mask.
    if ctx.is_plain(rs.event):
        lut, extra, use_extra = ctx.code_lut(rs.event), np.zeros(1, bool), False
    else:
        lut, extra, use_extra = np.ones(len(cache.vocab) + 1, bool), ctx.mask(rs.event), True
    if rs.monetary:
        col = cache.prop(rs.monetary)
        m_codes, m_values = col.codes, col.value_numbers()
    else:
        m_codes, m_values = np.zeros(1, np.int32), np.zeros(1)
    rfm_pass(cache.ustart, cache.times, cache.codes, lut, extra, use_extra, m_codes, m_values,
             rs.monetary is not None, from_ms, as_of_ms, last, freq, money)
    users = np.flatnonzero(freq > 0).astype(np.int64)
    r: F64 = (as_of_ms - last[users]) / DAY_MS
    f: F64 = freq[users].astype(np.float64)
    m: F64 = money[users] if rs.monetary else f
    if rs.scoring == "thresholds":
        th = rs.thresholds
        rsc = _threshold_score(r, th["r"], False)
        fsc = _threshold_score(f, th["f"], True)
        msc = _threshold_score(m, th["m"], True)
    else:
        rsc = _quantile_score(r, rs.bins, False)
        fsc = _quantile_score(f, rs.bins, True)
        msc = _quantile_score(m, rs.bins, True)
    return users, r, f, m, rsc, fsc, msc


def assign_layers(rs: RfmSpec, rsc: I64, fsc: I64, msc: I64) -> tuple[list[str], I64]:
    names = [layer.name for layer in rs.layers] + [OTHERS]
    out = np.full(len(rsc), len(rs.layers), np.int64)
    free = np.ones(len(rsc), bool)
    by_key = {"r": rsc, "f": fsc, "m": msc}
    for i, layer in enumerate(rs.layers):
        ok = free.copy()
        for key, (lo, hi) in layer.ranges.items():
            ok &= (by_key[key] >= lo) & (by_key[key] <= hi)
        out[ok] = i
        free &= ~ok
    return names, out


def layers_as_of(ctx: Context, spec: Mapping[str, Any], from_ms: int, as_of_ms: int,
                 ) -> tuple[list[str], I64]:
    """Layer names and, per user of the cache, its layer index (-1: not scored)."""
    rs = parse(spec)
    users, _, _, _, rsc, fsc, msc = scores(ctx, rs, from_ms, as_of_ms)
    names, lay = assign_layers(rs, rsc, fsc, msc)
    out = np.full(ctx.cache.n_users, -1, np.int64)
    out[users] = lay
    return names, out


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    rs = parse(spec)
    as_of = parse_date(spec["as_of"], "as_of") if "as_of" in spec else ctx.common.end
    as_of_ms = local_ms(as_of, ctx.common.tz)
    users, r, f, m, rsc, fsc, msc = scores(ctx, rs, ctx.common.start_ms, as_of_ms)
    names, lay = assign_layers(rs, rsc, fsc, msc)
    b = rs.bins

    def body(mask: npt.NDArray[np.bool_] | None, suffix: str) -> dict[str, Any]:
        # A breakdown splits the users scored over everyone: scores are not re-ranked
        # within a part, so a part shows where its users stand in the whole base.
        pick = None if mask is None else mask[users]
        total = len(users) if pick is None else int(np.count_nonzero(pick))
        layers = []
        for i, name in enumerate(names):
            sel = lay == i if pick is None else pick & (lay == i)
            n = int(np.count_nonzero(sel))
            layers.append({
                "layer": name, "users": n, "share": round(n / total, 6) if total else 0.0,
                "avg_recency_days": float(r[sel].mean()) if n else None,
                "avg_frequency": float(f[sel].mean()) if n else None,
                "avg_monetary": float(m[sel].mean()) if n else None,
                "cell": f"layer:{name}{suffix}"})
        rs_, fs_ = (rsc, fsc) if pick is None else (rsc[pick], fsc[pick])
        grid = np.bincount((rs_ - 1) * b + (fs_ - 1), minlength=b * b).reshape(b, b)
        rf = [{"r": i + 1, "f": j + 1, "users": int(grid[i, j]),
               "cell": f"rf:{i + 1}:{j + 1}{suffix}"} for i in range(b) for j in range(b)]
        return {"users": total, "users_cell": f"users{suffix}", "layers": layers, "rf_grid": rf}

    data = {"as_of": as_of.isoformat(), "bins": b, **body(None, "")}

    def deciding() -> npt.NDArray[np.bool_]:
        t = ctx.cache.times
        return ctx.mask(rs.event) & (t >= ctx.common.start_ms) & (t < as_of_ms)

    splits = user_splits(ctx.cache, spec.get("breakdown"), ctx.resolver, ctx.common.project,
                         "rfm", rows=deciding, among=lambda: users)
    if splits:
        data["breakdown"] = splits.parts(body)

    def frame() -> pd.DataFrame:
        return pd.DataFrame({"user_id": ctx.cache.users[users], "recency_days": r,
                             "frequency": f, "monetary": m, "r": rsc, "f": fsc, "m": msc,
                             "layer": pd.Categorical.from_codes(lay, names)})

    def cell_users(cell: str) -> I64 | None:
        opened = splits.open(cell)
        if opened is None:
            return None
        base, mask = opened
        pick = np.ones(len(users), bool) if mask is None else mask[users]
        parts = base.split(":")
        if base == "users":
            return i64(users[pick])
        if parts[0] == "layer" and base[6:] in names:
            return i64(users[pick & (lay == names.index(base[6:]))])
        if parts[0] == "rf" and len(parts) == 3 and all(p.isdigit() for p in parts[1:]):
            return i64(users[pick & (rsc == int(parts[1])) & (fsc == int(parts[2]))])
        return None

    return Result("rfm", ctx.common.project, data,
                  {"layers": lazy_frame(data["layers"]), "users": frame}, cell_users, ctx.cache)
