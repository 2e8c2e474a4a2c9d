"""Funnels: how many users reach each step, in order, within a conversion window.

Spec (JSON)::

    {"from": "2026-10-01", "to": "2026-11-01", "window": "7d", "mode": "ordered",
     "steps": [{"event": "view_menu"}, {"event": "submit_order", "where": [...]}, "pay"],
     "exclusions": [{"event": "cancel_order", "between": [2, 3]}],
     "hold": "order_id", "breakdown": {"property": "channel", "attribution": "first"},
     "trend": "day", "time_to_convert": ["1m", "1h", "1d"]}

The pass itself is in :mod:`.funnel_kernel`; this module builds its inputs (per-code
step bits, per-row bits for filtered steps) and reads its per-user outputs into
step counts, breakdowns, trends and the users behind each number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from .breakdown import Breakdown, parse_breakdown
from .context import Context, EventSel, parse_event_sel
from .filters import row_mask
from .funnel_kernel import NONE, funnel_any, funnel_fast, funnel_ordered
from .result import Result, i64, lazy_frame, ratio
from .spec import PERIODS, opt_str, parse_duration, req_list

__all__ = ["MAX_STEPS", "FunnelRun", "FunnelSpec", "compute", "parse", "run"]

MAX_STEPS = 60  # step bits live in one int64
MODES = ("ordered", "strict", "any")
DEFAULT_TTC = ("1m", "5m", "15m", "1h", "3h", "1d", "3d", "7d")
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Exclusion:
    sel: EventSel
    a: int  # 0-based step after which ...
    b: int  # ... and before which the event disqualifies


@dataclass(frozen=True)
class FunnelSpec:
    steps: tuple[EventSel, ...]
    window_ms: int
    mode: str
    exclusions: tuple[Exclusion, ...]
    hold: str | None
    breakdown: Breakdown | None
    trend: str | None
    ttc_bounds: tuple[int, ...]


def parse(spec: Mapping[str, Any]) -> FunnelSpec:
    raw_steps = req_list(spec, "steps", min_len=1)
    if len(raw_steps) > MAX_STEPS:
        raise InvalidInput("steps", f"must hold at most {MAX_STEPS} steps")
    steps = tuple(parse_event_sel(s, f"steps[{i}]") for i, s in enumerate(raw_steps))
    n = len(steps)
    window = parse_duration(spec.get("window", "7d"), "window")
    mode = opt_str(spec, "mode", "ordered", choices=MODES) or "ordered"
    exclusions = []
    raw_ex = spec.get("exclusions", [])
    if not isinstance(raw_ex, list):
        raise InvalidInput("exclusions", "must be a list")
    if raw_ex and mode != "ordered":
        raise InvalidInput("exclusions", "apply to ordered funnels only")
    for i, r in enumerate(raw_ex):
        sel = parse_event_sel(r, f"exclusions[{i}]")
        between = r.get("between", [1, n]) if isinstance(r, Mapping) else [1, n]
        if (not isinstance(between, list) or len(between) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in between)
                or not 1 <= between[0] < between[1] <= n):
            raise InvalidInput(f"exclusions[{i}].between",
                               f"must be two step numbers [a, b] with 1 <= a < b <= {n}")
        exclusions.append(Exclusion(sel, between[0] - 1, between[1] - 1))
    hold = spec.get("hold")
    if hold is not None and not isinstance(hold, str):
        raise InvalidInput("hold", "must be a property name")
    bd = parse_breakdown(spec.get("breakdown"))
    if bd is not None and bd.step >= n:
        raise InvalidInput("breakdown.step", f"must be a step number from 1 to {n}")
    trend = opt_str(spec, "trend", None, choices=PERIODS)
    raw_ttc = spec.get("time_to_convert", list(DEFAULT_TTC))
    if not isinstance(raw_ttc, list) or not raw_ttc:
        raise InvalidInput("time_to_convert", "must be a non-empty list of durations")
    ttc = sorted({parse_duration(x, f"time_to_convert[{i}]") for i, x in enumerate(raw_ttc)})
    return FunnelSpec(steps, window, mode, tuple(exclusions), hold, bd, trend, tuple(ttc))


@dataclass
class FunnelRun:
    """Per-user outcome of the pass (arrays over all users of the cache)."""

    k: npt.NDArray[np.int64]  # steps reached; 0 not in the funnel; -1 dropped by an exclusion
    start: I64  # start time of the counted attempt
    dur: I64  # [step, user]: ms from the attempt's first step to that step (valid for j < k)
    first_row: I64
    last_row: I64
    attr_row: I64


def _bits(ctx: Context, sels: tuple[EventSel, ...]) -> tuple[I64, I64, bool]:
    """Per-code bits for plain selections, per-row bits for filtered ones."""
    cache = ctx.cache
    lut = np.zeros(len(cache.vocab) + 1, np.int64)
    extra: I64 | None = None
    for j, sel in enumerate(sels):
        bit = np.int64(1) << np.int64(j)
        if ctx.is_plain(sel):
            lut[ctx.code_lut(sel)] |= bit
        else:
            m = ctx.mask(sel)
            if extra is None:
                extra = np.zeros(cache.n, np.int64)
            extra[m] |= bit
    if extra is None:
        return lut, np.zeros(1, np.int64), False
    return lut, extra, True


def _groups(ctx: Context, fs: FunnelSpec, lut: I64, extra: I64, use_extra: bool,
            ) -> tuple[I64, I64, bool, I64]:
    """Group boundaries (and a row order) for the pass: users, or (user, held value)."""
    cache = ctx.cache
    if fs.hold is None:
        seen = row_mask(cache, ctx.global_where) if fs.mode == "strict" else None
        if seen is None:
            return cache.ustart, np.zeros(1, np.int64), False, np.arange(cache.n_users)
        # A strict funnel breaks on any other event the analysis reads; the spec's
        # where decides which those are, so the events it drops are not there at all.
        rows = np.flatnonzero(seen)
        return _user_groups(cache.uidx[rows].astype(np.int64), rows)
    col = cache.prop(fs.hold)
    bits = lut[cache.codes] | (extra if use_extra else 0)
    rows = np.flatnonzero((bits != 0) & (col.codes >= 0))
    order = rows[np.lexsort((cache.keys[rows], cache.times[rows], col.codes[rows],
                             cache.uidx[rows]))]
    return _user_groups(cache.uidx[order].astype(np.int64), order,
                        col.codes[order].astype(np.int64))


def _user_groups(u: I64, order: I64, v: I64 | None = None) -> tuple[I64, I64, bool, I64]:
    """Groups over rows in ``order``: a new group where the user (or held value) changes."""
    step = np.diff(u) != 0
    if v is not None:
        step |= np.diff(v) != 0
    if not len(order):  # no rows, no groups (not one empty group without a user)
        return np.zeros(1, np.int64), order.astype(np.int64), True, np.empty(0, np.int64)
    gstart = np.concatenate([[0], np.flatnonzero(step) + 1, [len(order)]]).astype(np.int64)
    return gstart, order.astype(np.int64), True, u[gstart[:-1]]


def compute(ctx: Context, fs: FunnelSpec) -> FunnelRun:
    """Run the pass and return, per user, the counted attempt."""
    cache, c = ctx.cache, ctx.common
    n = len(fs.steps)
    lut, extra, use_extra = _bits(ctx, fs.steps)
    gstart, order, use_order, guser = _groups(ctx, fs, lut, extra, use_extra)
    g = len(gstart) - 1
    # Every pass writes every output of every group, so nothing needs clearing first.
    out_k = np.empty(g, np.int64)
    out_start = np.empty(g, np.int64)
    out_dur = np.empty((n, g), np.int64)  # by step: one step's times are contiguous
    rows = [np.empty(g, np.int64) for _ in range(3)]
    attr = fs.breakdown.step if fs.breakdown and fs.breakdown.attribution == "step" else -1
    if fs.mode == "ordered" and not fs.exclusions and not use_order:
        funnel_fast(gstart, cache.times, cache.codes, lut, extra, use_extra, n, fs.window_ms,
                    c.start_ms, c.end_ms, attr, out_k, out_start, out_dur, *rows)
    elif fs.mode == "any":
        funnel_any(gstart, order, use_order, cache.times, cache.codes, lut, extra, use_extra, n,
                   fs.window_ms, c.start_ms, c.end_ms, attr, out_k, out_start, out_dur, *rows)
    else:
        xsels = tuple(e.sel for e in fs.exclusions)
        xlut, xextra, use_x = _bits(ctx, xsels) if xsels else (
            np.zeros(len(cache.vocab) + 1, np.int64), np.zeros(1, np.int64), False)
        barriers = sorted({e.b for e in fs.exclusions}, reverse=True)
        level_barrier = np.array([n, *barriers], np.int64)
        ex_level = np.array([1 + barriers.index(e.b) for e in fs.exclusions], np.int64)
        funnel_ordered(
            gstart, order, use_order, cache.times, cache.codes, lut, extra, use_extra, xlut,
            xextra, use_x, n, fs.window_ms, c.start_ms, c.end_ms, fs.mode == "strict",
            np.array([e.a for e in fs.exclusions], np.int64),
            np.array([e.b for e in fs.exclusions], np.int64), ex_level, level_barrier, attr,
            out_k, out_start, out_dur, *rows)
    if not use_order:
        return FunnelRun(out_k, out_start, out_dur, *rows)
    # Several groups per user (held property): keep the furthest, latest-starting one.
    pick = np.lexsort((out_start, out_k, guser))
    last = np.flatnonzero(np.append(np.diff(guser[pick]) != 0, True)) if g else pick[:0]
    best = pick[last]
    u = cache.n_users
    k = np.zeros(u, np.int64)
    start = np.full(u, NONE, np.int64)
    dur = np.zeros((n, u), np.int64)
    outs = [np.full(u, -1, np.int64) for _ in range(3)]
    users = guser[best]
    k[users], start[users], dur[:, users] = out_k[best], out_start[best], out_dur[:, best]
    for dst, src in zip(outs, rows, strict=True):
        dst[users] = src[best]
    return FunnelRun(k, start, dur, *outs)


def _step_rows(fs: FunnelSpec, run: FunnelRun, users: I64 | None) -> list[dict[str, Any]]:
    """Per step: users reaching it, conversions, drop-off, time to convert.

    ``users`` limits the count to some users (a breakdown value); None means all.
    """
    k = run.k if users is None else run.k[users]
    n = len(fs.steps)
    reached = np.bincount(np.clip(k, 0, n), minlength=n + 1)[::-1].cumsum()[::-1]
    # Times exist only for users past step 1: pick those rows once, not per step.
    moved = np.flatnonzero(k >= 2)
    k_moved = k[moved]
    rows = moved if users is None else users[moved]
    out: list[dict[str, Any]] = []
    first = int(reached[1]) if n else 0
    prev = first
    for j, sel in enumerate(fs.steps):
        cnt = int(reached[j + 1])
        times = run.dur[j][rows[k_moved > j]] if cnt and j else np.empty(0, np.int64)
        out.append({
            "step": j + 1, "event": sel.label, "users": cnt,
            "conversion_from_first": ratio(cnt, first),
            "conversion_from_previous": ratio(cnt, prev),
            "dropoff": prev - cnt,
            "median_time_to_convert_ms": float(np.median(times)) if len(times) else None,
            "avg_time_to_convert_ms": float(times.mean()) if len(times) else None,
            "cell": f"step:{j + 1}",
            "dropoff_cell": f"dropoff:{j}" if j else None,
        })
        prev = cnt
    return out


def _attr_rows(fs: FunnelSpec, run: FunnelRun) -> I64 | None:
    bd = fs.breakdown
    if bd is None or bd.on != "event":
        return None
    return {"first": run.first_row, "last": run.last_row, "step": run.attr_row}[bd.attribution]


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    fs = parse(spec)
    fr = compute(ctx, fs)
    cache = ctx.cache
    entered = np.flatnonzero(fr.k > 0)
    n = len(fs.steps)
    data: dict[str, Any] = {
        "from": ctx.common.start.isoformat(), "to": ctx.common.end.isoformat(),
        "time_zone": ctx.common.tz_name, "mode": fs.mode, "window_ms": fs.window_ms,
        "steps": _step_rows(fs, fr, None),
        "excluded_users": int(np.count_nonzero(fr.k < 0)), "excluded_cell": "excluded",
    }
    frames = {"steps": lazy_frame(data["steps"])}
    rows = _attr_rows(fs, fr)
    splits: dict[str, npt.NDArray[np.bool_]] = {}
    if fs.breakdown is not None:
        parts: list[dict[str, Any]] = []
        for label, m in fs.breakdown.split(cache, entered, None if rows is None else rows[
                entered], ctx.resolver, ctx.common.project):
            splits[label] = m
            steps = _step_rows(fs, fr, entered[m])
            for s in steps:
                s["cell"] = f"{s['cell']}/{label}"
                if s["dropoff_cell"]:
                    s["dropoff_cell"] = f"{s['dropoff_cell']}/{label}"
            parts.append({"value": label, "steps": steps})
        data["breakdown"] = parts
        parts_rows: list[dict[str, Any]] = [{"value": p["value"], **s} for p in parts
                                            for s in p["steps"]]
        frames["breakdown"] = lazy_frame(parts_rows)
    if fs.trend is not None:
        starts, bounds = ctx.periods(fs.trend)
        idx = np.searchsorted(bounds, fr.start[entered], side="right") - 1
        trend = []
        for i, day in enumerate(starts):
            sel = idx == i
            e = int(np.count_nonzero(sel))
            conv = int(np.count_nonzero(fr.k[entered[sel]] == n))
            trend.append({"period": day.isoformat(), "entered": e, "converted": conv,
                          "conversion": ratio(conv, e), "cell": f"trend:{day.isoformat()}",
                          "converted_cell": f"trend:{day.isoformat()}:converted"})
        data["trend"] = trend
        frames["trend"] = lazy_frame(trend)
    conv_users = entered[fr.k[entered] == n]
    if n > 1:
        d = fr.dur[n - 1, conv_users]
        edges = [0, *fs.ttc_bounds]
        buckets = []
        for i, lo in enumerate(edges):
            hi = edges[i + 1] if i + 1 < len(edges) else None
            sel = (d >= lo) & (d < hi) if hi is not None else d >= lo
            buckets.append({"from_ms": lo, "to_ms": hi, "users": int(np.count_nonzero(sel)),
                            "cell": f"ttc:{i}"})
        data["time_to_convert"] = buckets
        frames["time_to_convert"] = lazy_frame(buckets)

    def cell_users(cell: str) -> I64 | None:
        name, _, label = cell.partition("/")
        base = entered
        if label:
            if label not in splits:
                return None
            base = entered[splits[label]]
        kind, _, arg = name.partition(":")
        if name == "excluded" and not label:
            return np.flatnonzero(fr.k < 0)
        try:
            if kind == "step" and 1 <= int(arg) <= n:
                return i64(base[fr.k[base] >= int(arg)])
            if kind == "dropoff" and 1 <= int(arg) < n:
                return i64(base[fr.k[base] == int(arg)])
            if kind == "ttc" and not label and n > 1:
                i = int(arg)
                edges = [0, *fs.ttc_bounds, 2**62]
                d = fr.dur[n - 1, conv_users]
                return i64(conv_users[(d >= edges[i]) & (d < edges[i + 1])])
        except (ValueError, IndexError):
            return None
        if kind == "trend" and fs.trend is not None and not label:
            starts, bounds = ctx.periods(fs.trend)
            days = [s.isoformat() for s in starts]
            day, _, what = arg.partition(":")
            if day not in days or what not in ("", "converted"):
                return None
            i = days.index(day)
            st = fr.start[entered]
            pick = (st >= bounds[i]) & (st < bounds[i + 1])
            if what:
                pick &= fr.k[entered] == n
            return i64(entered[pick])
        return None

    return Result("funnel", ctx.common.project, data, frames, cell_users, cache)
