"""How each customer group behaves: the tables the generator draws from.

One :class:`GroupBehaviour` per group in ``catalog.GROUPS`` order. Everything the
docs promise an operator will find (white-collar lunch peaks, family weekends,
students dropping between order and pay) is a number in this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import (
    FAMILY_SETS,
    HOT_DISHES,
    KIDS_MEALS,
    LUNCH_SET,
    MAIN_DISHES,
    SIDE_DISHES,
    STUDENT_COMBO,
)
from .draw import cumulative

__all__ = [
    "BEHAVIOUR",
    "DINING",
    "PAY_METHODS",
    "RATINGS_ANGRY",
    "RATINGS_NORMAL",
    "GroupBehaviour",
    "Recipe",
]

DINING: tuple[str, ...] = ("dine_in", "takeaway", "delivery")
PAY_METHODS: tuple[str, ...] = ("wechat", "alipay", "card", "member_balance")

# A recipe is a list of (dish pool, least, most): one basket draws a count from each.
Recipe = tuple[tuple[tuple[int, ...], int, int], ...]

# (weight, mean minute of the day, spread in minutes)
Mixture = tuple[tuple[float, float, float], ...]


@dataclass(frozen=True, slots=True)
class GroupBehaviour:
    name: str
    # Chance of a visit on a given day, by day type (weekday, friday, weekend, holiday).
    visit_rate: tuple[float, float, float, float]
    # Multiplier on a weekday during school holidays (students only differ).
    school_holiday: float
    # Time of visit on working days and on free days.
    workday_hours: Mixture
    freeday_hours: Mixture
    # Channel weights in catalog.CHANNELS order.
    channels: tuple[float, ...]
    # Chance a visit ends before an order is submitted.
    browse_only: float
    # Dining mode weights (dine_in, takeaway, delivery).
    dining: tuple[float, ...]
    recipes: tuple[tuple[float, Recipe], ...]
    # Chance a submitted order is never paid, without and with a coupon on it.
    pay_drop: float
    pay_drop_coupon: float
    # Chance a held coupon is used on an order, and the visit boost while holding one.
    coupon_use: float
    coupon_boost: float
    # Paid membership: chance to view the offer on an app/mini program visit, and to buy.
    membership_view: float
    membership_buy: float
    paid_share: float  # share of existing members who are paid members at the start
    feedback: float
    age: tuple[int, int]

    # Cumulative weights for Draw.weighted, computed once.
    channel_cum: tuple[float, ...] = field(init=False)
    dining_cum: tuple[float, ...] = field(init=False)
    recipe_cum: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_cum", cumulative(self.channels))
        object.__setattr__(self, "dining_cum", cumulative(self.dining))
        object.__setattr__(self, "recipe_cum", cumulative([w for w, _ in self.recipes]))


_SIDES = SIDE_DISHES
_HOT_SIDES = tuple(i for i in HOT_DISHES if i in SIDE_DISHES)

BEHAVIOUR: tuple[GroupBehaviour, ...] = (
    GroupBehaviour(
        name="family",
        visit_rate=(0.022, 0.05, 0.175, 0.18),
        school_holiday=1.15,
        workday_hours=((0.2, 12 * 60, 35), (0.8, 18 * 60 + 30, 40)),
        freeday_hours=((0.45, 12 * 60, 45), (0.4, 18 * 60, 45), (0.15, 15 * 60, 60)),
        channels=(0.20, 0.35, 0.15, 0.08, 0.22),
        browse_only=0.22,
        dining=(0.75, 0.15, 0.10),
        recipes=(
            (0.55, ((FAMILY_SETS, 1, 1), (KIDS_MEALS, 0, 1), (_SIDES, 1, 3))),
            (0.45, ((MAIN_DISHES, 2, 3), (KIDS_MEALS, 1, 2), (_SIDES, 1, 3))),
        ),
        pay_drop=0.05,
        pay_drop_coupon=0.03,
        coupon_use=0.85,
        coupon_boost=1.9,
        membership_view=0.10,
        membership_buy=0.12,
        paid_share=0.16,
        feedback=0.30,
        age=(28, 46),
    ),
    GroupBehaviour(
        name="white_collar",
        visit_rate=(0.17, 0.15, 0.03, 0.03),
        school_holiday=1.0,
        workday_hours=((0.8, 12 * 60 + 28, 22), (0.13, 19 * 60, 40), (0.07, 9 * 60, 40)),
        freeday_hours=((0.5, 12 * 60 + 30, 60), (0.5, 18 * 60 + 30, 60)),
        channels=(0.40, 0.35, 0.05, 0.15, 0.05),
        browse_only=0.10,
        dining=(0.20, 0.35, 0.45),
        recipes=(
            (0.45, (((LUNCH_SET,), 1, 1), (_SIDES, 0, 1))),
            (0.55, ((MAIN_DISHES, 1, 1), (_SIDES, 0, 1))),
        ),
        pay_drop=0.04,
        pay_drop_coupon=0.03,
        coupon_use=0.4,
        coupon_boost=1.15,
        membership_view=0.07,
        membership_buy=0.08,
        paid_share=0.12,
        feedback=0.18,
        age=(23, 40),
    ),
    GroupBehaviour(
        name="student",
        visit_rate=(0.045, 0.07, 0.09, 0.10),
        school_holiday=1.7,
        workday_hours=((0.85, 17 * 60 + 20, 42), (0.15, 12 * 60 + 10, 20)),
        freeday_hours=((0.35, 12 * 60 + 30, 50), (0.45, 16 * 60 + 30, 80), (0.2, 19 * 60 + 30, 50)),
        channels=(0.35, 0.45, 0.08, 0.02, 0.10),
        browse_only=0.28,
        dining=(0.40, 0.50, 0.10),
        recipes=(
            (0.4, (((STUDENT_COMBO,), 1, 1), (_HOT_SIDES, 0, 1))),
            (0.6, ((HOT_DISHES, 1, 2), (MAIN_DISHES, 0, 1))),
        ),
        pay_drop=0.34,
        pay_drop_coupon=0.09,
        coupon_use=0.9,
        coupon_boost=1.6,
        membership_view=0.06,
        membership_buy=0.04,
        paid_share=0.06,
        feedback=0.22,
        age=(15, 23),
    ),
)

RATINGS_NORMAL: tuple[float, ...] = cumulative((0.02, 0.04, 0.12, 0.35, 0.47))
RATINGS_ANGRY: tuple[float, ...] = cumulative((0.40, 0.33, 0.17, 0.07, 0.03))
