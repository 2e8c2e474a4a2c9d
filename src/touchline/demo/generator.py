"""``generate``: the chain-restaurant demo as batches of Sensors wire records.

Day by day: campaign coupons go out, paid memberships renew or lapse, a vectorised
draw picks who visits and when, and each visit writes its records. Records that fall
after the day (feedback in the evening, a customer coming back on a rescue coupon
tomorrow) wait in the buffer; each day's records leave sorted by time, so the whole
stream is in time order, as an SDK fleet would deliver it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from .behaviour import BEHAVIOUR
from .calendar import FRIDAY, WEEKDAY, WEEKEND, build_calendar
from .campaigns import run_campaigns
from .catalog import DISHES, SEASONAL_DISH, Dish
from .draw import Draw
from .junk import add_junk
from .membership import expire_or_renew
from .population import EXISTING, NEW, build_population
from .visit import Visits
from .wire import Wire
from .world import World

__all__ = ["generate"]

Rec = dict[str, Any]

# One knob for volume: 20,000 customers over 100 days give a bit over 1M events.
_RATE_SCALE = 0.8
_RATE = np.array([b.visit_rate for b in BEHAVIOUR], dtype=np.float64)
_SCHOOL = np.array([b.school_holiday for b in BEHAVIOUR], dtype=np.float64)
_COUPON_BOOST = np.array([b.coupon_boost for b in BEHAVIOUR], dtype=np.float64)
_STUDENT = 2
_by_time = itemgetter("time")


def generate(seed: int, *, customers: int = 20_000, days: int = 100, end_ms: int,
             batch_size: int = 10_000) -> Iterator[list[Rec]]:
    """Yield the demo's records in time order, ``batch_size`` at a time.

    Deterministic: the same arguments give the same records. Every record is a
    Sensors Analytics wire object (see wire.py); all belong to project ``default``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInput("seed", "must be a non-negative integer")
    if customers < 1:
        raise InvalidInput("customers", "must be at least 1")
    if days < 1:
        raise InvalidInput("days", "must be at least 1")
    if end_ms <= days * 86_400_000:
        raise InvalidInput("end_ms", "must be a time in ms since the epoch after the window")
    if batch_size < 1:
        raise InvalidInput("batch_size", "must be at least 1")
    return _run(seed, customers, days, end_ms, batch_size)


def _run(seed: int, n: int, days: int, end_ms: int, batch_size: int) -> Iterator[list[Rec]]:
    cal = build_calendar(days, end_ms)
    pop = build_population(np.random.default_rng([seed, 0]), n, days, cal.starts_ms[0])
    draw = Draw(np.random.default_rng([seed, 1]))
    sched = np.random.default_rng([seed, 2])
    w = World(cal, draw, Wire(draw), pop, breakpoint_day=max(days - 40, 0))
    visits = Visits(w)
    joins: dict[int, list[int]] = {}
    for c in pop.customers:
        if c.kind == NEW:
            joins.setdefault(c.join_day, []).append(c.idx)
    ready: list[Rec] = []
    for day in range(days):
        start = cal.starts_ms[day]
        if day == 0:
            _menu(w, start + 60_000, DISHES)
            # The CRM's first-night sync: every member registered before the window.
            for c in pop.customers:
                if c.kind == EXISTING:
                    w.profile(c, start + 3 * 3_600_000 + c.idx)
        if day == days // 2 and days > 1:
            # Mid-window menu change: a seasonal dish and a bubble-tea price rise.
            tea = DISHES[18]
            _menu(w, start + 60_000, (SEASONAL_DISH, Dish(tea.item_id, tea.name, tea.category,
                                                          tea.price + 2.0, tea.is_hot)))
        run_campaigns(w, day)
        _memberships(w, day)
        idx, minutes = _visitors(w, sched, day)
        for i, m in zip(idx.tolist(), minutes.tolist(), strict=True):
            visits.member_visit(pop.customers[i], start + int(m * 60_000), day)
        for kind, who in ((visits.join_visit, joins.get(day, ())),
                          (visits.browse_visit, pop.browse_days.get(day, ()))):
            if not who:
                continue
            arr = np.asarray(who, dtype=np.int64)
            for i, m in zip(arr.tolist(), _minutes(w, sched, day, arr).tolist(), strict=True):
                kind(pop.customers[i], start + int(m * 60_000), day)
        w.out.sort(key=_by_time)
        cut = bisect_left(w.out, min(cal.starts_ms[day + 1], end_ms), key=_by_time)
        today = w.out[:cut]
        del w.out[:cut]
        add_junk(today, draw)
        today.sort(key=_by_time)
        ready.extend(today)
        while len(ready) >= batch_size:
            yield ready[:batch_size]
            del ready[:batch_size]
    if ready:
        yield ready


def _menu(w: World, t: int, dishes: tuple[Dish, ...]) -> None:
    for dish in dishes:
        w.emit(w.wire.item_set(t, "dish", dish.item_id, {
            "name": dish.name, "category": dish.category, "price": dish.price,
            "is_hot": dish.is_hot}))


def _memberships(w: World, day: int) -> None:
    lo, hi = w.cal.starts_ms[day], w.cal.starts_ms[day + 1]
    for i in np.flatnonzero(w.pop.paid).tolist():
        c = w.pop.customers[i]
        if lo <= c.expires_ms < hi:
            expire_or_renew(w, c, day)


def _visitors(w: World, sched: np.random.Generator,
              day: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Who comes today (members only) and at which minute of the local day."""
    pop, cal = w.pop, w.cal
    dt = int(cal.day_type[day])
    rate = _RATE[pop.group, dt]
    if dt in (WEEKDAY, FRIDAY) and cal.school_holiday[day]:
        rate = rate * _SCHOOL[pop.group]
    boost = np.where(pop.paid, 1.25, 1.0) * np.where(
        pop.coupon_until > cal.starts_ms[day], _COUPON_BOOST[pop.group], 1.0)
    p = rate * pop.activity * boost * (cal.season[day] * _RATE_SCALE)
    alive = (pop.join_day < day) & (pop.churn_day > day)
    idx = np.flatnonzero(alive & (sched.random(len(p)) < p)).astype(np.int64)
    return idx, _minutes(w, sched, day, idx)


def _minutes(w: World, sched: np.random.Generator, day: int,
             idx: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Minute of the local day for each visitor, from the group's time-of-day mixture."""
    cal, groups = w.cal, w.pop.group[idx]
    dt = int(cal.day_type[day])
    out = np.empty(len(idx), dtype=np.float64)
    for g, b in enumerate(BEHAVIOUR):
        sel = np.flatnonzero(groups == g)
        if not len(sel):
            continue
        free = dt >= WEEKEND or (g == _STUDENT and bool(cal.school_holiday[day]))
        mix = b.freeday_hours if free else b.workday_hours
        weights = np.array([m[0] for m in mix])
        comp = np.searchsorted(np.cumsum(weights) / weights.sum(), sched.random(len(sel)),
                               side="right").clip(0, len(mix) - 1)
        means = np.array([m[1] for m in mix])[comp]
        sds = np.array([m[2] for m in mix])[comp]
        out[sel] = means + sds * sched.standard_normal(len(sel))
    return np.clip(out, 7 * 60, 22 * 60 + 30)
