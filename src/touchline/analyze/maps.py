"""Journey maps and their diagnosis: where customers drop out, who, and what they do instead.

A map (YAML or JSON) names ordered stages, each with the events that put a customer in
it, optional ``where`` filters, its touchpoints (a property and its values) and a KPI::

    name: restaurant
    window: 1d            # conversion window between consecutive stages
    stages:
      - {name: arrive, events: [app_launch, mp_launch], kpi: {name: reach, target: 0}}
      - {name: order, events: [submit_order], kpi: {name: conversion, target: 0.6}}

:func:`diagnose` answers, per stage: reach (users with a stage event in the range),
conversion to the next stage within the window (a two-step ordered funnel), the users
lost, the median time to the next stage, where the lost users went instead (the first
other event after their last stage event), the reach per touchpoint, the same split by
a segment, the change against the previous period of the same length, and the
breakpoints ranked by users lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from ..errors import InvalidInput, NotFound
from ..track.records import NAME_RE
from . import funnel
from .breakdown import label_masks
from .context import Context, EventSel, parse_event_sel
from .engine import Analyzer
from .filters import parse_filter
from .result import ratio
from .spec import parse_duration, req_list, req_mapping

__all__ = ["DEMO_MAPS", "JourneyMap", "MapStage", "diagnose", "load_map", "map_cell_users",
           "parse_map"]

DEMO_MAPS = Path(__file__).resolve().parent.parent / "demo" / "maps"
TOP_NEXT = 5
NO_FURTHER = "(no further event)"
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class MapStage:
    name: str
    sel: EventSel
    touchpoint_property: str | None
    touchpoint_values: tuple[str, ...]
    kpi_name: str
    kpi_target: float


@dataclass(frozen=True)
class JourneyMap:
    name: str
    title: str
    window_ms: int
    stages: tuple[MapStage, ...]


def parse_map(doc: Any) -> JourneyMap:
    doc = req_mapping(doc, "map")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("map.name", "is required")
    title = doc.get("title", name)
    window = parse_duration(doc.get("window", "7d"), "map.window")
    stages = []
    for i, raw in enumerate(req_list(doc, "stages", "map.", min_len=2)):
        field = f"map.stages[{i}]"
        raw = req_mapping(raw, field)
        sname = raw.get("name")
        if not isinstance(sname, str) or not sname:
            raise InvalidInput(f"{field}.name", "is required")
        events = raw.get("events")
        if not isinstance(events, list) or not events or not all(
                isinstance(e, str) and e for e in events):
            raise InvalidInput(f"{field}.events", "must be a non-empty list of event names")
        parse_filter(raw.get("where"), f"{field}.where")
        sel = parse_event_sel({"event": events, "where": raw.get("where"), "name": sname}, field)
        tp = raw.get("touchpoints") or {}
        tp = req_mapping(tp, f"{field}.touchpoints")
        tprop = tp.get("property")
        if tprop is not None and (not isinstance(tprop, str) or not NAME_RE.match(tprop)):
            raise InvalidInput(f"{field}.touchpoints.property", "must be a property name")
        tvals = tp.get("values", [])
        if not isinstance(tvals, list):
            raise InvalidInput(f"{field}.touchpoints.values", "must be a list")
        kpi = req_mapping(raw.get("kpi") or {"name": "conversion", "target": 0.0},
                          f"{field}.kpi")
        target = kpi.get("target", 0.0)
        if isinstance(target, bool) or not isinstance(target, int | float):
            raise InvalidInput(f"{field}.kpi.target", "must be a number")
        stages.append(MapStage(sname, sel, tprop, tuple(str(v) for v in tvals),
                               str(kpi.get("name", "conversion")), float(target)))
    if len({s.name for s in stages}) != len(stages):
        raise InvalidInput("map.stages", "stage names must be unique")
    return JourneyMap(name, str(title), window, tuple(stages))


def load_map(ref: str | Path, maps_dir: Path = DEMO_MAPS) -> JourneyMap:
    """A map from a file path, or by name from ``maps_dir`` (the demo's maps)."""
    path = Path(ref)
    if not path.is_file():
        path = maps_dir / f"{ref}.yaml"
    if not path.is_file():
        raise NotFound(f"no journey map {str(ref)!r} (a file, or one of: "
                       + ", ".join(sorted(p.stem for p in maps_dir.glob("*.yaml"))) + ")")
    try:
        doc = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput("map", f"cannot be read: {exc}") from exc
    return parse_map(doc)


@dataclass
class _StageRun:
    reach: I64  # dense user indexes
    converted: I64
    lost: I64
    median_ms: float | None
    next_events: list[tuple[str, int]]
    touchpoints: dict[str, int]


def _pair(ctx: Context, jmap: JourneyMap, i: int) -> _StageRun:
    """Stage ``i``: its reach and, through a two-step funnel, conversion to ``i + 1``."""
    cache = ctx.cache
    stage = jmap.stages[i]
    in_range = ctx.range_mask()
    rows = np.flatnonzero(ctx.mask(stage.sel) & in_range)
    reach = np.unique(cache.uidx[rows]).astype(np.int64)
    touch: dict[str, int] = {}
    if stage.touchpoint_property:
        col = cache.prop(stage.touchpoint_property)
        for label, m in label_masks(col.codes[rows], col.values, 50):
            touch[label] = len(np.unique(cache.uidx[rows[m]]))
    if i + 1 >= len(jmap.stages):
        return _StageRun(reach, reach[:0], reach[:0], None, [], touch)
    fs = funnel.FunnelSpec((stage.sel, jmap.stages[i + 1].sel), jmap.window_ms, "ordered", (),
                           None, None, None, ())
    run = funnel.compute(ctx, fs)
    converted = np.flatnonzero(run.k >= 2)
    lost = np.flatnonzero(run.k == 1)
    median = float(np.median(run.dur[1, converted])) if len(converted) else None
    # Where the lost went: the first event after their last stage event that is not
    # itself a stage event, within the window.
    stage_codes = ctx.code_lut(stage.sel)
    start = run.first_row[lost]
    end = cache.ustart[lost + 1]
    q = start + 1
    # Step over the stage's own events, all lost users at once.
    busy = q < end
    busy[busy] = stage_codes[cache.codes[q[busy]]]
    while busy.any():
        q[busy] += 1
        busy &= q < end
        busy[busy] = stage_codes[cache.codes[q[busy]]]
    found = q < end
    found[found] = cache.times[q[found]] - cache.times[start[found]] <= jmap.window_ms
    codes = np.where(found, cache.codes[np.minimum(q, cache.n - 1)], len(cache.vocab))
    counts = np.bincount(codes, minlength=len(cache.vocab) + 1)
    names = [*cache.vocab, NO_FURTHER]
    top = sorted(((names[c], int(counts[c])) for c in np.flatnonzero(counts)),
                 key=lambda kv: (-kv[1], kv[0]))[:TOP_NEXT]
    return _StageRun(reach, converted, lost, median, top, touch)


def _split(ctx: Context, segment: str | None) -> list[tuple[str, npt.NDArray[np.bool_]]]:
    """Split users by a profile property (``group``) or by a saved segment (in / not in)."""
    if not segment:
        return []
    cache = ctx.cache
    if ctx.resolver is not None:
        try:
            members = cache.user_positions(ctx.resolver(ctx.common.project, segment))
        except NotFound:
            members = None
        if members is not None:
            m = np.zeros(cache.n_users, bool)
            m[members] = True
            return [(segment, m), (f"not {segment}", ~m)]
    if not NAME_RE.match(segment):
        raise InvalidInput("segment", "must be a profile property or a saved segment name")
    col = cache.profile_prop(segment)
    return label_masks(col.codes, col.values, 20)


def _stage_rows(jmap: JourneyMap, runs: list[_StageRun]) -> list[dict[str, Any]]:
    """Per stage. A ``conversion`` KPI is judged on the conversion *into* the stage
    (from the one before it): "60% of those who arrive order"."""
    out = []
    conv_in: float | None = None
    for i, (stage, r) in enumerate(zip(jmap.stages, runs, strict=True)):
        last = i + 1 == len(jmap.stages)
        conv = None if last else ratio(len(r.converted), len(r.reach))
        out.append({
            "stage": stage.name, "reach": len(r.reach),
            "next_stage": None if last else jmap.stages[i + 1].name,
            "converted": None if last else len(r.converted),
            "conversion": conv, "conversion_in": conv_in,
            "lost": None if last else len(r.lost),
            "median_time_to_next_ms": r.median_ms,
            "lost_went_to": [{"event": e, "users": n} for e, n in r.next_events],
            "touchpoints": r.touchpoints,
            "kpi": {"name": stage.kpi_name, "target": stage.kpi_target,
                    "met": None if stage.kpi_name != "conversion" or conv_in is None
                    else conv_in >= stage.kpi_target},
            "cells": {"reach": f"reach:{stage.name}", "converted": f"converted:{stage.name}",
                      "lost": f"lost:{stage.name}"},
        })
        conv_in = conv
    return out


def _spec_for(spec: Mapping[str, Any], start: Any, end: Any) -> dict[str, Any]:
    return {**spec, "from": start.isoformat(), "to": end.isoformat()}


def diagnose(analyzer: Analyzer, jmap: JourneyMap, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Diagnose ``jmap`` over ``spec`` (``project``, ``from``, ``to``, ``time_zone``,
    ``where``, plus ``segment`` and ``compare: "previous"``)."""
    spec = req_mapping(spec, "spec")
    ctx = analyzer.context(spec)
    runs = [_pair(ctx, jmap, i) for i in range(len(jmap.stages))]
    stages = _stage_rows(jmap, runs)
    out: dict[str, Any] = {
        "map": jmap.name, "title": jmap.title, "window_ms": jmap.window_ms,
        "from": ctx.common.start.isoformat(), "to": ctx.common.end.isoformat(),
        "stages": stages,
        "breakpoints": [
            {"stage": s["stage"], "next_stage": s["next_stage"], "lost": s["lost"],
             "conversion": s["conversion"],
             "next_kpi_met": stages[i + 1]["kpi"]["met"], "cell": s["cells"]["lost"]}
            for i, s in sorted(((i, s) for i, s in enumerate(stages) if s["lost"]),
                               key=lambda p: -p[1]["lost"])],
    }
    segment = spec.get("segment")
    if segment is not None and not isinstance(segment, str):
        raise InvalidInput("segment", "must be a string")
    parts = _split(ctx, segment)
    if parts:
        out["segments"] = []
        for label, m in parts:
            rows: list[dict[str, Any]] = []
            for i, (stage, r) in enumerate(zip(jmap.stages, runs, strict=True)):
                last = i + 1 == len(jmap.stages)
                reach = int(np.count_nonzero(m[r.reach]))
                conv = int(np.count_nonzero(m[r.converted]))
                rows.append({"stage": stage.name, "reach": reach,
                             "converted": None if last else conv,
                             "conversion": None if last else ratio(conv, reach),
                             "lost": None if last else int(np.count_nonzero(m[r.lost]))})
            out["segments"].append({"segment": label, "stages": rows})
    compare = spec.get("compare")
    if compare not in (None, "previous"):
        raise InvalidInput("compare", "must be previous")
    if compare == "previous":
        length = (ctx.common.end - ctx.common.start).days
        prev_start = ctx.common.start - timedelta(days=length)
        prev = diagnose(analyzer, jmap, {k: v for k, v in _spec_for(
            spec, prev_start, ctx.common.start).items() if k not in ("compare", "segment")})
        out["previous"] = {"from": prev["from"], "to": prev["to"]}
        for cur, old in zip(out["stages"], prev["stages"], strict=True):
            cur["change"] = {
                "reach": cur["reach"] - old["reach"],
                "conversion": None if cur["conversion"] is None or old["conversion"] is None
                else round(cur["conversion"] - old["conversion"], 6),
                "lost": None if cur["lost"] is None else cur["lost"] - old["lost"],
            }
    return out


def map_cell_users(analyzer: Analyzer, jmap: JourneyMap, spec: Mapping[str, Any],
                   cell: str) -> I64:
    """User ids behind a map number: ``reach:STAGE``, ``converted:STAGE``, ``lost:STAGE``."""
    kind, _, stage = cell.partition(":")
    names = [s.name for s in jmap.stages]
    if kind not in ("reach", "converted", "lost") or stage not in names:
        raise NotFound(f"no cell {cell!r} in map {jmap.name}")
    ctx = analyzer.context(req_mapping(spec, "spec"))
    r = _pair(ctx, jmap, names.index(stage))
    dense = {"reach": r.reach, "converted": r.converted, "lost": r.lost}[kind]
    return np.sort(ctx.cache.users[dense])
