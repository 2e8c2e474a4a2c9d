"""The brand's standing coupon campaigns, run before Touchline orchestrates anything.

- Thursdays: a family-set coupon for the weekend to some families (official account
  or WeCom), valid a week.
- Mondays: a discount coupon to some students (mini program), valid a week.
- Tuesdays: a free-item lunch treat to a few white-collar customers (app), five days.

Holding a coupon raises a customer's visit rate by the group's ``coupon_boost``:
this is the discount sensitivity the analyses should find.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .catalog import GROUPS
from .world import World

__all__ = ["CAMPAIGNS", "Campaign", "run_campaigns"]


@dataclass(frozen=True, slots=True)
class Campaign:
    name: str
    weekday: int  # 0 = Monday
    group: str
    share: float
    coupon_type: str
    channels: tuple[str, ...]
    valid_days: float


CAMPAIGNS: tuple[Campaign, ...] = (
    Campaign("weekend_family", 3, "family", 0.30, "family_set",
             ("official_account", "wecom"), 7),
    Campaign("student_discount", 0, "student", 0.25, "discount", ("mini_program",), 7),
    Campaign("lunch_treat", 1, "white_collar", 0.10, "free_item", ("app",), 5),
)


def run_campaigns(w: World, day: int) -> None:
    """Send today's campaign coupons to members who joined and have not churned."""
    weekday = w.cal.dates[day].weekday()
    pop = w.pop
    start = w.cal.starts_ms[day]
    for camp in CAMPAIGNS:
        if camp.weekday != weekday:
            continue
        g = GROUPS.index(camp.group)
        eligible = ((pop.group == g) & (pop.join_day < day) & (pop.churn_day > day))
        picked = np.flatnonzero(eligible & (w.draw.rng.random(len(eligible)) < camp.share))
        for i in picked.tolist():
            c = pop.customers[i]
            # Sent in the morning push window, 10:00 to 11:00.
            t = start + 10 * 3_600_000 + w.draw.minutes(0, 60)
            w.give_coupon(c, t, camp.coupon_type, camp.name, w.draw.pick(camp.channels),
                          camp.valid_days)
