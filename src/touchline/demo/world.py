"""The state one generator run shares between its parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .calendar import TIME_ZONE, DemoCalendar
from .catalog import CHANNELS, GROUPS
from .draw import Draw
from .population import Coupon, Customer, Population, level_for
from .wire import Wire

__all__ = ["World"]


@dataclass(slots=True)
class World:
    cal: DemoCalendar
    draw: Draw
    wire: Wire
    pop: Population
    # Records produced so far and not yet handed out; sorted by time before output.
    out: list[dict[str, Any]] = field(default_factory=list)
    orders: int = 0
    coupons: int = 0
    # The day the slow stores start to struggle (the breakpoint).
    breakpoint_day: int = 0

    def emit(self, rec: dict[str, Any]) -> None:
        self.out.append(rec)

    def next_order_id(self) -> str:
        self.orders += 1
        return f"O{self.orders:08d}"

    def give_coupon(self, c: Customer, t: int, coupon_type: str, campaign: str,
                    channel: str, valid_days: float) -> Coupon:
        """Hand ``c`` a coupon at ``t`` (a server-side ``coupon_receive``)."""
        self.coupons += 1
        coupon = Coupon(f"C{self.coupons:07d}", coupon_type, t + int(valid_days * 86_400_000),
                        campaign)
        c.coupon = coupon
        self.pop.coupon_until[c.idx] = coupon.expires_ms
        self.emit(self.wire.server_track(c.login_id, t, "coupon_receive", {
            "channel": channel, "city": c.city, "coupon_id": coupon.coupon_id,
            "coupon_type": coupon_type, "campaign": campaign,
        }))
        return coupon

    def profile(self, c: Customer, t: int) -> None:
        """The CRM's profile of a member: at registration, or for members registered
        before the window, in the CRM sync on its first night."""
        props: dict[str, Any] = {
            "group": GROUPS[c.group],
            "city": c.city,
            "gender": c.gender,
            "age": c.age,
            "mobile": c.mobile,
            "member_level": c.level,
            "is_paid_member": c.paid,
            "$timezone": TIME_ZONE,
            "total_orders": c.total_orders,
            "total_spent": c.total_spent,
        }
        if c.paid:
            props["membership_expires_at"] = self.cal.iso(c.expires_ms)
        self.emit(self.wire.server_profile(c.login_id, t, "set", props))
        self.emit(self.wire.server_profile(c.login_id, t, "set_once", {
            "register_channel": CHANNELS[c.register_channel],
            "home_store": c.store,
        }))

    def add_order(self, c: Customer, t: int, amount: float, category: str) -> None:
        """Totals after a paid order: increment, level changes, new favourite category."""
        c.total_orders += 1
        c.total_spent = round(c.total_spent + amount, 2)
        self.emit(self.wire.server_profile(c.login_id, t, "increment",
                                           {"total_orders": 1, "total_spent": amount}))
        level = level_for(c.total_spent)
        if level != c.level:
            c.level = level
            self.emit(self.wire.server_profile(c.login_id, t + 1, "set",
                                               {"member_level": level}))
        if category not in c.categories:
            c.categories.add(category)
            self.emit(self.wire.server_profile(c.login_id, t + 1, "append",
                                               {"favorite_categories": [category]}))
