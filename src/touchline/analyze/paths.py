"""Paths: what users do from a start event, before an end event, or between the two.

Spec::

    {"from": ..., "to": ..., "start": {"event": "view_menu"}, "end": {"event": "pay"},
     "steps": 5, "session_gap": "30m", "exclude": ["app_launch"],
     "group": [{"pattern": "^coupon_", "name": "coupon"}], "top": 20}

The result has ``nodes`` and weighted ``edges`` for a Sankey chart (a node is an event
at a step: ``"2:add_to_cart"``), the most common whole paths, and a cell per node, edge
and top path to open the users behind it. A ``breakdown`` repeats all of it per value
(an event property is read on the user's first start event in the range, or the first
end event when there is no start; ``"attribution": "last"`` takes the last).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from .breakdown import user_splits
from .context import Context, EventSel, parse_event_sel
from .kernels import paths_pass
from .result import Result, i64, lazy_frame
from .spec import opt_int, parse_duration

__all__ = ["run"]

Bool = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]


def _node_codes(ctx: Context, spec: Mapping[str, Any]) -> tuple[npt.NDArray[np.int64], list[str],
                                                                 npt.NDArray[np.bool_]]:
    """Per event code: its node (after grouping) and whether it is excluded."""
    vocab = ctx.cache.vocab
    exclude = spec.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
        raise InvalidInput("exclude", "must be a list of event names")
    groups = spec.get("group", [])
    if not isinstance(groups, list):
        raise InvalidInput("group", "must be a list of {pattern, name}")
    rules: list[tuple[re.Pattern[str], str]] = []
    for i, g in enumerate(groups):
        if not isinstance(g, Mapping) or not isinstance(g.get("pattern"), str):
            raise InvalidInput(f"group[{i}].pattern", "is required: a regular expression")
        try:
            rx = re.compile(g["pattern"])
        except re.error:
            raise InvalidInput(f"group[{i}].pattern", "must be a valid regular expression") from None
        name = g.get("name", g["pattern"])
        if not isinstance(name, str):
            raise InvalidInput(f"group[{i}].name", "must be a string")
        rules.append((rx, name))
    labels: list[str] = []
    index: dict[str, int] = {}
    node = np.zeros(len(vocab) + 1, np.int64)
    excluded = np.zeros(len(vocab) + 1, bool)
    for code, name in enumerate(vocab):
        label = next((lab for rx, lab in rules if rx.search(name)), name)
        excluded[code] = name in exclude
        if label not in index:
            index[label] = len(labels)
            labels.append(label)
        node[code] = index[label]
    return node, labels, excluded


def _compute(ctx: Context, spec: Mapping[str, Any]) -> tuple[npt.NDArray[np.int64],
                                                             npt.NDArray[np.int64], list[str],
                                                             int, bool]:
    cache = ctx.cache
    steps = opt_int(spec, "steps", 5, lo=2, hi=20)
    gap = parse_duration(spec.get("session_gap", "30m"), "session_gap")
    start: EventSel | None = parse_event_sel(spec["start"], "start") if spec.get(
        "start") is not None else None
    end: EventSel | None = parse_event_sel(spec["end"], "end") if spec.get(
        "end") is not None else None
    node_lut, labels, excluded = _node_codes(ctx, spec)
    keep = ctx.range_mask() & ~excluded[cache.codes]
    gw = ctx.global_where
    if gw is not None:
        keep &= ctx.mask(EventSel(("$any",), None, "any"))
    node = node_lut[cache.codes]
    no = np.zeros(1, bool)
    is_start = ctx.mask(start) if start else no
    is_end = ctx.mask(end) if end else no
    args = (cache.ustart, cache.times, node, keep, is_start, is_end, start is not None,
            end is not None, steps, gap)
    n_paths = paths_pass(*args, np.empty((1, steps), np.int64), np.empty(1, np.int64), True)
    out_nodes = np.empty((n_paths, steps), np.int64)
    out_user = np.empty(n_paths, np.int64)
    paths_pass(*args, out_nodes, out_user, False)
    return out_nodes, out_user, labels, steps, end is not None and start is None


def _count_rows(rows: npt.NDArray[np.int64], n_labels: int,
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Distinct rows and their counts; rows packed into one integer key when they fit
    (much faster than a row-wise unique)."""
    base = n_labels + 1
    if base ** rows.shape[1] < 2**62:
        key = np.zeros(len(rows), np.int64)
        for i in range(rows.shape[1]):
            key = key * base + (rows[:, i] + 1)
        _, first, cnt = np.unique(key, return_index=True, return_counts=True)
        return rows[first], cnt.astype(np.int64)
    uniq, cnt = np.unique(rows, axis=0, return_counts=True)
    return uniq.astype(np.int64), cnt.astype(np.int64)


def _top_paths(rows: I64, n_labels: int, top: int) -> tuple[I64, I64]:
    """The ``top`` most common whole paths (as node rows) and how many times each."""
    if not len(rows):
        return np.empty((0, rows.shape[1]), np.int64), np.empty(0, np.int64)
    uniq, cnt = _count_rows(rows, n_labels)
    best = np.argsort(-cnt, kind="stable")[:top]
    return uniq[best], cnt[best]


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    nodes_arr, users, labels, steps, _ = _compute(ctx, spec)
    top = opt_int(spec, "top", 20, lo=1, hi=1000)
    n_labels = max(len(labels), 1)

    def body(mask: Bool | None, suffix: str) -> dict[str, Any]:
        rows = nodes_arr if mask is None else nodes_arr[mask[users]]
        who = users if mask is None else users[mask[users]]
        nodes = []
        for i in range(steps):
            col = rows[:, i]
            cnt = np.bincount(col[col >= 0], minlength=n_labels)
            for code in np.flatnonzero(cnt):
                nodes.append({"id": f"{i + 1}:{labels[code]}", "step": i + 1,
                              "event": labels[code], "count": int(cnt[code]),
                              "cell": f"node:{i + 1}:{labels[code]}{suffix}"})
        edges = []
        for i in range(steps - 1):
            a, b = rows[:, i], rows[:, i + 1]
            ok = (a >= 0) & (b >= 0)
            counts = np.bincount(a[ok] * n_labels + b[ok], minlength=n_labels * n_labels)
            vals = np.flatnonzero(counts)
            for v, c in zip(vals, counts[vals], strict=True):
                src, dst = labels[v // n_labels], labels[v % n_labels]
                edges.append({"source": f"{i + 1}:{src}", "target": f"{i + 2}:{dst}",
                              "value": int(c), "cell": f"edge:{i + 1}:{src}:{dst}{suffix}"})
        uniq, cnt = _top_paths(rows, n_labels, top)
        top_paths = [{"path": [labels[x] for x in uniq[i] if x >= 0], "count": int(cnt[i]),
                      "cell": f"path:{i + 1}{suffix}"} for i in range(len(cnt))]
        # Paths come out user by user, so distinct users are where the user changes.
        n_users = int(np.count_nonzero(np.diff(who))) + 1 if len(who) else 0
        return {"paths": len(rows), "users": n_users, "users_cell": f"users{suffix}",
                "nodes": nodes, "edges": edges, "top_paths": top_paths}

    data = body(None, "")

    def deciding() -> Bool:
        # The event a path starts from: the start event, else the end event.
        sel = spec.get("start") if spec.get("start") is not None else spec.get("end")
        which = "start" if spec.get("start") is not None else "end"
        base = parse_event_sel(sel, which) if sel is not None else EventSel(("$any",), None,
                                                                           "any")
        return ctx.mask(base) & ctx.range_mask()

    splits = user_splits(ctx.cache, spec.get("breakdown"), ctx.resolver, ctx.common.project,
                         "paths", rows=deciding, among=lambda: np.unique(users))
    if splits:
        data["breakdown"] = splits.parts(body)
    frames = {"nodes": lazy_frame(data["nodes"]), "edges": lazy_frame(data["edges"]),
              "top_paths": lazy_frame(data["top_paths"])}
    index = {lab: i for i, lab in enumerate(labels)}

    def cell_users(cell: str) -> npt.NDArray[np.int64] | None:
        opened = splits.open_among(cell, users)
        if opened is None:
            return None
        base, pick = opened
        if base == "users":
            return i64(users[pick])
        kind, _, rest = base.partition(":")
        num, _, rest = rest.partition(":")
        if not num.isdigit():
            return None
        if kind == "path" and not rest:
            uniq, _ = _top_paths(nodes_arr[pick], n_labels, top)
            rank = int(num) - 1
            if not 0 <= rank < len(uniq):
                return None
            return i64(users[pick & (nodes_arr == uniq[rank]).all(axis=1)])
        step = int(num) - 1
        if not 0 <= step < steps:
            return None
        if kind == "node" and rest in index:
            return i64(users[pick & (nodes_arr[:, step] == index[rest])])
        if kind == "edge" and step + 1 < steps:
            # Group names may hold colons: find the split that names two nodes.
            for at in range(len(rest)):
                if rest[at] == ":" and rest[:at] in index and rest[at + 1:] in index:
                    m = (nodes_arr[:, step] == index[rest[:at]]) & (
                        nodes_arr[:, step + 1] == index[rest[at + 1:]])
                    return i64(users[pick & m])
        return None

    return Result("paths", ctx.common.project, data, frames, cell_users, ctx.cache)
