"""Paths: what users do from a start event, before an end event, or between the two.

Spec::

    {"from": ..., "to": ..., "start": {"event": "view_menu"}, "end": {"event": "pay"},
     "steps": 5, "session_gap": "30m", "exclude": ["app_launch"],
     "group": [{"pattern": "^coupon_", "name": "coupon"}], "top": 20}

The result has ``nodes`` and weighted ``edges`` for a Sankey chart (a node is an event
at a step: ``"2:add_to_cart"``), the most common whole paths, and a cell per node and
edge to open the users behind it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from .context import Context, EventSel, parse_event_sel
from .kernels import paths_pass
from .result import Result, i64, lazy_frame
from .spec import opt_int, parse_duration

__all__ = ["run"]


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


def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
    nodes_arr, users, labels, steps, _ = _compute(ctx, spec)
    top = opt_int(spec, "top", 20, lo=1, hi=1000)
    n_labels = max(len(labels), 1)
    nodes = []
    for i in range(steps):
        col = nodes_arr[:, i]
        cnt = np.bincount(col[col >= 0], minlength=n_labels)
        for code in np.flatnonzero(cnt):
            nodes.append({"id": f"{i + 1}:{labels[code]}", "step": i + 1, "event": labels[code],
                          "count": int(cnt[code]), "cell": f"node:{i + 1}:{labels[code]}"})
    edges = []
    for i in range(steps - 1):
        a, b = nodes_arr[:, i], nodes_arr[:, i + 1]
        ok = (a >= 0) & (b >= 0)
        key = a[ok] * n_labels + b[ok]
        counts = np.bincount(key, minlength=n_labels * n_labels)
        vals = np.flatnonzero(counts)
        for v, c in zip(vals, counts[vals], strict=True):
            src, dst = labels[v // n_labels], labels[v % n_labels]
            edges.append({"source": f"{i + 1}:{src}", "target": f"{i + 2}:{dst}",
                          "value": int(c), "cell": f"edge:{i + 1}:{src}:{dst}"})
    # Most common whole paths.
    top_paths: list[dict[str, Any]] = []
    if len(nodes_arr):
        uniq, cnt = _count_rows(nodes_arr, n_labels)
        for idx in np.argsort(-cnt, kind="stable")[:top]:
            top_paths.append({"path": [labels[x] for x in uniq[idx] if x >= 0],
                              "count": int(cnt[idx])})
    # Paths come out user by user, so distinct users are where the user changes.
    n_users = int(np.count_nonzero(np.diff(users))) + 1 if len(users) else 0
    data = {"paths": len(nodes_arr), "users": n_users, "nodes": nodes,
            "edges": edges, "top_paths": top_paths}
    frames = {"nodes": lazy_frame(nodes), "edges": lazy_frame(edges),
              "top_paths": lazy_frame(top_paths)}
    index = {lab: i for i, lab in enumerate(labels)}

    def cell_users(cell: str) -> npt.NDArray[np.int64] | None:
        parts = cell.split(":")
        try:
            step = int(parts[1]) - 1
        except (IndexError, ValueError):
            return None
        if not 0 <= step < steps:
            return None
        if parts[0] == "node" and len(parts) == 3 and parts[2] in index:
            return i64(users[nodes_arr[:, step] == index[parts[2]]])
        if (parts[0] == "edge" and len(parts) == 4 and step + 1 < steps
                and parts[2] in index and parts[3] in index):
            m = (nodes_arr[:, step] == index[parts[2]]) & (
                nodes_arr[:, step + 1] == index[parts[3]])
            return i64(users[m])
        return None

    return Result("paths", ctx.common.project, data, frames, cell_users, ctx.cache)
