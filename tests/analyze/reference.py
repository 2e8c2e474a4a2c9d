"""Plain, slow, obviously-correct implementations the fast engine is checked against.

They take events as plain tuples in the canonical order of the event source (user,
time, event key) and follow docs/analysis.md word for word, by brute force.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Event = tuple[int, int, str, dict[str, Any]]  # user, time ms, event, properties
Match = Callable[[Event], bool]


@dataclass
class RefUser:
    k: int  # steps reached (0 none, -1 dropped by an exclusion)
    dur: int | None  # ms from first to last step of the counted attempt


def _order(events: list[Event], steps: Sequence[Match], excl: Sequence[Match]) -> list[Event]:
    """Events at one instant are taken in the order of the first step they match,
    exclusion-only events after them, other events last (stable otherwise)."""
    n = len(steps)

    def key(e: Event) -> tuple[int, int]:
        for j, m in enumerate(steps):
            if m(e):
                return e[1], j
        return e[1], n if any(x(e) for x in excl) else n + 1

    return sorted(events, key=key)


def funnel_user(
    events: list[Event], steps: Sequence[Match], window: int, t_from: int, t_to: int, *,
    mode: str = "ordered", exclusions: Sequence[tuple[Match, int, int]] = (),
) -> RefUser:
    """One user's funnel by enumerating every chain of distinct events."""
    n = len(steps)
    evs = [e for e in events if t_from <= e[1] <= t_to + window]
    evs = _order(evs, steps, [x[0] for x in exclusions])
    if mode == "any":
        return _any_user(evs, steps, window, t_from, t_to)
    best_any = 0
    best: tuple[int, int, int] = (0, 0, 0)  # (k, start, -reach)

    def disqualified(chain: list[int]) -> bool:
        for match, a, b in exclusions:
            if b < len(chain):
                lo, hi = chain[a], chain[b]
                if any(match(evs[i]) for i in range(lo + 1, hi)):
                    return True
        return False

    def extend(chain: list[int]) -> None:
        nonlocal best_any, best
        k = len(chain)
        start = evs[chain[0]][1]
        best_any = max(best_any, k)
        if not disqualified(chain):
            cand = (k, start, -evs[chain[-1]][1])
            if cand > best:
                best = cand
        if k == n:
            return
        last = chain[-1]
        nxt = range(last + 1, last + 2) if mode == "strict" else range(last + 1, len(evs))
        for i in nxt:
            if i >= len(evs) or evs[i][1] - start > window:
                break
            if steps[k](evs[i]):
                extend([*chain, i])

    for i, e in enumerate(evs):
        if t_from <= e[1] < t_to and steps[0](e):
            extend([i])
    k, start, neg_reach = best
    if exclusions and best_any > k:
        return RefUser(-1, None)
    return RefUser(k, (-neg_reach - start) if k else None)


def _any_user(evs: list[Event], steps: Sequence[Match], window: int, t_from: int,
              t_to: int) -> RefUser:
    """Any order, for events that each match at most one step: from each first event,
    the longest prefix of steps all present within the window."""
    best = (0, 0, 0)
    for p, e in enumerate(evs):
        if not (t_from <= e[1] < t_to) or not any(m(e) for m in steps):
            continue
        first_seen: dict[int, int] = {}
        for q in range(p, len(evs)):
            if evs[q][1] - e[1] > window:
                break
            for j, m in enumerate(steps):
                if m(evs[q]) and j not in first_seen:
                    first_seen[j] = evs[q][1]
                    break
        k = 0
        while k < len(steps) and k in first_seen:
            k += 1
        if k:
            cand = (k, e[1], -max(first_seen[j] for j in range(k)))
            if cand[:2] >= best[:2]:
                best = cand
    k, start, neg = best
    return RefUser(k, (-neg - start) if k else None)


def by_user(events: Sequence[Event]) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        out[e[0]].append(e)
    return out


def funnel_counts(users: dict[int, RefUser], n: int) -> list[int]:
    return [sum(1 for u in users.values() if u.k > j) for j in range(n)]


def retention(events: Sequence[Event], start: str, ret: str, day_from: int, n_cohorts: int,
              periods: int, *, first_time: bool, on_or_after: bool) -> dict[int, list[int]]:
    """Daily calendar retention in UTC: cohort day -> [size, retained on day 1..periods]."""
    out: dict[int, list[int]] = {c: [0] * (periods + 1) for c in range(n_cohorts)}
    for _, evs in by_user(events).items():
        starts = sorted({e[1] // 86_400_000 - day_from for e in evs if e[2] == start})
        if first_time:
            starts = starts[:1]
        returns = {e[1] // 86_400_000 - day_from for e in evs if e[2] == ret}
        for c in starts:
            if not 0 <= c < n_cohorts:
                continue
            out[c][0] += 1
            for n in range(1, periods + 1):
                hit = any(r - c >= n for r in returns) if on_or_after else (c + n) in returns
                out[c][n] += hit
    return out


def lifecycle(events: Sequence[Event], day_from: int, n_days: int) -> list[list[int]]:
    """Daily lifecycle in UTC: per day [new, returning, resurrecting, dormant]."""
    out = [[0, 0, 0, 0] for _ in range(n_days)]
    for _, evs in by_user(events).items():
        days = {e[1] // 86_400_000 - day_from for e in evs}
        first = min(days)
        for d in range(n_days):
            if d in days:
                if d == first:
                    out[d][0] += 1
                elif d - 1 in days:
                    out[d][1] += 1
                else:
                    out[d][2] += 1
            elif d - 1 in days:
                out[d][3] += 1
    return out


def paths_from(events: Sequence[Event], start: str, steps: int, gap_ms: int,
               t_from: int, t_to: int) -> dict[tuple[str, ...], int]:
    """Paths from the first `start` of each session, repeats collapsed."""
    out: dict[tuple[str, ...], int] = defaultdict(int)
    for _, evs in by_user(events).items():
        evs = [e for e in evs if t_from <= e[1] < t_to]
        sessions: list[list[Event]] = []
        for e in evs:
            if not sessions or e[1] - sessions[-1][-1][1] > gap_ms:
                sessions.append([])
            sessions[-1].append(e)
        for s in sessions:
            names: list[str] = []
            for e in s:
                if not names or names[-1] != e[2]:
                    names.append(e[2])
            if start in names:
                i = names.index(start)
                out[tuple(names[i:i + steps])] += 1
    return dict(out)


def _text(v: Any) -> str:
    """A property value as the event source hands it over (JSON text of a scalar)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _number(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _equal(s: str, want: Any) -> bool:
    if isinstance(want, int | float) and not isinstance(want, bool):
        return _number(s) == float(want)
    return s == _text(want)


def cond_holds(cond: dict[str, Any], value: Any) -> bool:
    """One filter condition on one property value (None: unset), as docs/analysis.md
    words it: ``!=``, ``not in`` and ``is not set`` hold where the property is unset,
    nothing else does; numbers compare as numbers."""
    op: str = cond.get("op", "=")
    want: Any = cond["value"] if "value" in cond else None
    if value is None:
        return op in ("!=", "not in", "is not set")
    s = _text(value)
    if op == "is set":
        return True
    if op == "is not set":
        return False
    if op == "=":
        return _equal(s, want)
    if op == "!=":
        return not _equal(s, want)
    if op == "in":
        return any(_equal(s, w) for w in want)
    if op == "not in":
        return not any(_equal(s, w) for w in want)
    if op == "contains":
        return str(want) in s
    if op == "regex":
        return re.search(want, s) is not None
    n = _number(s)
    if n is None:
        return False
    limit = float(want)
    return {">": n > limit, ">=": n >= limit, "<": n < limit, "<=": n <= limit}[op]


def filter_holds(f: Any, props: dict[str, Any], profile: dict[str, Any]) -> bool:
    """A whole filter (condition, list, and/or) on one event and its user's profile."""
    if f is None:
        return True
    if isinstance(f, list):
        return all(filter_holds(x, props, profile) for x in f)
    if "and" in f:
        return all(filter_holds(x, props, profile) for x in f["and"])
    if "or" in f:
        return any(filter_holds(x, props, profile) for x in f["or"])
    name, on = f["property"], f.get("on", "event")
    if name.startswith("user."):
        name, on = name[5:], "profile"
    return cond_holds(f, (profile if on == "profile" else props).get(name))


def deciding_value(events: Sequence[Event], starts: Match, prop: str, *,
                   last: bool = False) -> dict[int, str]:
    """Per user, the breakdown label an event property gives it: the value on its first
    (or last) event matching ``starts``, ``(none)`` when that event lacks it. Users with
    no such event are left out."""
    out: dict[int, str] = {}
    for user, evs in by_user(events).items():
        hits = [e for e in evs if starts(e)]
        if hits:
            e = hits[-1] if last else hits[0]
            out[user] = _text(e[3][prop]) if e[3].get(prop) is not None else "(none)"
    return out
