"""Paid membership: the offer seen in the app or mini program, purchase, renewal, expiry.

Monthly (19.9) and annual (199) plans. A member who buys keeps the perks until
``membership_expires_at``; on that day the order system either renews the plan
(auto-renew) or lets it lapse (``membership_expire``). Renewal is likelier for
customers who come often, and never happens after a customer has churned.
"""

from __future__ import annotations

from typing import Any

from .behaviour import BEHAVIOUR
from .calendar import DAY_MS
from .population import Customer
from .wire import Device
from .world import World

__all__ = ["PLANS", "expire_or_renew", "offer"]

PLANS: dict[str, tuple[float, int]] = {"monthly": (19.9, 30), "annual": (199.0, 365)}
_RENEW = {"monthly": 0.55, "annual": 0.42}


def _set_paid(w: World, c: Customer, t: int, plan: str, channel: str) -> None:
    c.paid = True
    c.plan = plan
    c.expires_ms = max(c.expires_ms, t) + PLANS[plan][1] * DAY_MS
    c.member_channel = channel
    w.pop.paid[c.idx] = True
    w.emit(w.wire.server_profile(c.login_id, t + 500, "set", {
        "is_paid_member": True, "membership_expires_at": w.cal.iso(c.expires_ms)}))


def offer(w: World, c: Customer, dev: Device, t: int, base: dict[str, Any]) -> int:
    """Maybe show the membership offer on a logged-in app/mini program visit.

    Returns the time the visit continues at.
    """
    b = BEHAVIOUR[c.group]
    d = w.draw
    if c.paid or not d.chance(b.membership_view):
        return t
    w.emit(w.wire.client_track(dev, c.login_id, t, "membership_view", dict(base)))
    t += d.seconds(15, 90)
    if d.chance(b.membership_buy * (1.4 if c.value else 1.0)):
        plan = "monthly" if d.chance(0.72) else "annual"
        amount = PLANS[plan][0]
        w.emit(w.wire.client_track(dev, c.login_id, t, "membership_purchase",
                                   {**base, "plan": plan, "amount": amount}))
        _set_paid(w, c, t, plan, base["channel"])
        t += d.seconds(10, 40)
    return t


def expire_or_renew(w: World, c: Customer, day: int) -> None:
    """At ``c.expires_ms`` (which falls on ``day``): renew or lapse."""
    d = w.draw
    t = c.expires_ms
    chance = _RENEW[c.plan] * (1.25 if w.pop.activity[c.idx] > 1.2 else 1.0)
    base = {"channel": c.member_channel, "city": c.city}
    if day < c.churn_day and d.chance(chance):
        amount = PLANS[c.plan][0]
        w.emit(w.wire.server_track(c.login_id, t, "membership_renew",
                                   {**base, "plan": c.plan, "amount": amount}))
        _set_paid(w, c, t, c.plan, c.member_channel)
        return
    w.emit(w.wire.server_track(c.login_id, t, "membership_expire", {**base, "plan": c.plan}))
    w.emit(w.wire.server_profile(c.login_id, t + 500, "set", {"is_paid_member": False}))
    c.paid = False
    w.pop.paid[c.idx] = False
