"""One visit: arrive, browse the menu, order, pay, wait, dine, give feedback.

Client SDK channels (app, mini program, official-account H5) send the customer's
own actions from the device; the brand's servers send what happens in the kitchen
and the CRM (food_ready, dine, coupon_use, profiles, id binds). WeCom and kiosk
visits are wholly server-side and always carry the member id.

Where the journey breaks (docs/demo.md): students often leave between submitting an
order and paying; at the slow stores, after the breakpoint day, peak-hour waits are
long, many cancel while waiting, and those who stay rate the meal low. Some of the
dropped orders are rescued by a coupon that brings the customer back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .behaviour import (
    BEHAVIOUR,
    DINING,
    PAY_METHODS,
    RATINGS_ANGRY,
    RATINGS_NORMAL,
)
from .catalog import ARTICLES, CHANNELS, DISHES, MENU_CATEGORIES, SLOW_STORES, STORES
from .draw import cumulative
from .membership import offer
from .population import ANON_CHANNELS, Customer
from .wire import Device
from .world import World

__all__ = ["ARRIVE_EVENTS", "Visits"]

Track = Callable[[int, str, dict[str, Any]], None]

ARRIVE_EVENTS: tuple[str, ...] = (
    "app_launch", "mp_launch", "oa_article_view", "wecom_chat", "kiosk_checkin")
_APP = CHANNELS.index("app")
_MP = CHANNELS.index("mini_program")
_OA = CHANNELS.index("official_account")
_KIOSK = CHANNELS.index("kiosk")
# Added to a group's browse-only chance by channel: article readers mostly just read;
# someone at a kiosk is already in the store.
_CHANNEL_BROWSE = (0.0, 0.0, 0.35, 0.0, -0.08)
_PAY_PLAIN = cumulative((0.60, 0.33, 0.07))
_PAY_KIOSK = cumulative((0.45, 0.30, 0.25))
_DROP_REASONS = cumulative((0.45, 0.40, 0.15))  # changed_mind, price, other
_PEAKS = ((11 * 60, 13 * 60 + 45), (17 * 60, 20 * 60))
_STORES_BY_CITY = {s.city: [x.store_id for x in STORES if x.city == s.city] for s in STORES}


class Visits:
    """Emits the records of visits into ``world.out``."""

    def __init__(self, world: World) -> None:
        self.w = world

    # entry points ----------------------------------------------------------------

    def member_visit(self, c: Customer, t: int, day: int) -> None:
        d = self.w.draw
        channel = d.weighted(c.channel_cum)
        self._session(c, t, day, channel, second=d.chance(0.35), browse=None, rescued=False)

    def join_visit(self, c: Customer, t: int, day: int) -> None:
        """A new member's first visit: browse, log in at the order step, order."""
        self._session(c, t, day, c.register_channel, second=False, browse=False,
                      rescued=False)

    def browse_visit(self, c: Customer, t: int, day: int) -> None:
        """An anonymous look around before (or without ever) joining."""
        d = self.w.draw
        while True:
            channel = d.weighted(c.channel_cum)
            if channel in ANON_CHANNELS:
                break
        self._session(c, t, day, channel, second=False, browse=True, rescued=False)

    # the visit ---------------------------------------------------------------------

    def _session(self, c: Customer, t: int, day: int, channel: int, *, second: bool,
                 browse: bool | None, rescued: bool) -> None:
        w, d = self.w, self.w.draw
        b = BEHAVIOUR[c.group]
        dev = c.device(channel, second)
        if dev is None and not c.joined:
            # A kiosk registration: the newcomer types a mobile number, then checks in.
            self._join(c, t - 3000)
        store = c.store if d.chance(0.85) else d.pick(_STORES_BY_CITY[c.city])
        ch = CHANNELS[channel]
        base: dict[str, Any] = {"channel": ch, "store_id": store, "city": c.city}
        login = c.login_id if c.joined and (dev is None or dev.logged_in) else None

        def track(at: int, event: str, extra: dict[str, Any]) -> None:
            if dev is None:
                w.emit(w.wire.server_track(c.login_id, at, event, base, extra))
            else:
                w.emit(w.wire.client_track(dev, login, at, event, base, extra))

        arrive: dict[str, Any] = {}
        if channel == _OA:
            arrive["article_id"] = d.pick(ARTICLES)
        track(t, ARRIVE_EVENTS[channel], arrive)
        t += d.seconds(3, 40)
        if login is not None and dev is not None and channel in (_APP, _MP):
            t = offer(w, c, dev, t, base)
        for _ in range(1 + d.chance(0.5) + d.chance(0.15)):
            track(t, "view_menu", {"category": d.pick(MENU_CATEGORIES)})
            t += d.seconds(5, 50)
        if browse is None:
            browse = d.chance(b.browse_only + _CHANNEL_BROWSE[channel])
        basket = self._basket(c)
        if browse:
            basket = basket[:d.below(2)]
        for item in basket:
            dish = DISHES[item]
            track(t, "add_to_cart", {"item_id": dish.item_id, "price": dish.price})
            t += d.seconds(5, 45)
        if browse:
            return
        if dev is not None and not dev.logged_in:
            t = self._login(c, dev, t)
            login = c.login_id
        self._order(c, t, day, channel, dev, base, basket, track, rescued)

    def _order(self, c: Customer, t: int, day: int, channel: int, dev: Device | None,
               base: dict[str, Any], basket: list[int], track: Track, rescued: bool) -> None:
        w, d = self.w, self.w.draw
        b = BEHAVIOUR[c.group]
        dining = DINING[d.weighted(b.dining_cum)]
        if channel == _KIOSK and dining == "delivery":
            dining = "takeaway"
        total = sum(DISHES[i].price for i in basket)
        coupon = c.coupon
        if coupon is not None and (coupon.expires_ms < t or not d.chance(
                1.0 if rescued else b.coupon_use)):
            coupon = None
        discount = 0.0
        if coupon is not None:
            discount = {"discount": round(total * 0.2, 2), "family_set": 30.0,
                        "free_item": min(DISHES[i].price for i in basket)}[coupon.coupon_type]
        amount = round(max(total - discount, 1.0), 2)
        order_id = w.next_order_id()
        order: dict[str, Any] = {"order_id": order_id, "amount": amount,
                                 "items_count": len(basket), "dining": dining}
        if coupon is not None:
            order["coupon_id"] = coupon.coupon_id
        track(t, "submit_order", order)
        t += d.seconds(15, 120)
        if d.chance(b.pay_drop_coupon if coupon is not None else b.pay_drop):
            # Half cancel explicitly; the others just close the page.
            if d.chance(0.5):
                reason = ("changed_mind", "price", "other")[d.weighted(_DROP_REASONS)]
                track(t, "cancel_order", {"order_id": order_id, "reason": reason})
            if not rescued:
                self._rescue(c, t, channel, dev)
            return
        if c.paid and d.chance(0.45):
            method = "member_balance"
        else:
            method = PAY_METHODS[d.weighted(_PAY_KIOSK if channel == _KIOSK else _PAY_PLAIN)]
        track(t, "pay", {"order_id": order_id, "amount": amount, "pay_method": method})
        if coupon is not None:
            c.coupon = None
            w.pop.coupon_until[c.idx] = 0
            w.emit(w.wire.server_track(c.login_id, t + 300, "coupon_use", {
                **base, "coupon_id": coupon.coupon_id, "order_id": order_id}))
        minute = (t - w.cal.starts_ms[day]) // 60_000 if day < w.cal.days else 0
        slow = (base["store_id"] in SLOW_STORES and day >= w.breakpoint_day
                and any(lo <= minute < hi for lo, hi in _PEAKS))
        if dining == "delivery":
            wait = d.normal(58, 9) if slow else d.normal(32, 6)
        else:
            wait = d.normal(36, 7) if slow else d.normal(11, 3)
        wait = max(3.0, wait)
        if d.chance(0.30 if slow else 0.006):
            t_cancel = t + d.minutes(12, max(13, wait - 2))
            track(t_cancel, "cancel_order", {"order_id": order_id, "reason": "wait_too_long"})
            if not rescued:
                self._rescue(c, t_cancel, channel, dev)
            return
        w.add_order(c, t + 1000, amount, DISHES[basket[0]].category)
        t += int(wait * 60_000)
        server = {**base, "order_id": order_id}
        w.emit(w.wire.server_track(c.login_id, t, "food_ready",
                                   {**server, "wait_minutes": round(wait, 1)}))
        t += d.minutes(1, 6) if dining == "dine_in" else d.minutes(3, 15)
        w.emit(w.wire.server_track(c.login_id, t, "dine", {**server, "dining": dining}))
        angry = slow and wait > 25
        if d.chance(0.55 if angry else b.feedback):
            t += d.minutes(15, 180)
            rating = 1 + d.weighted(RATINGS_ANGRY if angry else RATINGS_NORMAL)
            track(t, "submit_feedback", {"order_id": order_id, "rating": rating})

    # helpers -------------------------------------------------------------------------

    def _basket(self, c: Customer) -> list[int]:
        d = self.w.draw
        b = BEHAVIOUR[c.group]
        _, recipe = b.recipes[d.weighted(b.recipe_cum)]
        out: list[int] = []
        for pool, lo, hi in recipe:
            for _ in range(d.between(lo, hi)):
                out.append(d.pick(pool))
        for _ in range(c.value):
            out.append(d.pick(recipe[-1][0]))
        if not out:
            out.append(d.pick(recipe[0][0]))
        return out

    def _login(self, c: Customer, dev: Device, t: int) -> int:
        """The order step needs a login: ``$SignUp`` from the device, binds from the CRM."""
        w = self.w
        w.emit(w.wire.client_signup(dev, c.login_id, t))
        dev.logged_in = True
        if not c.joined:
            self._join(c, t + 800)
        if dev.flavor == "mp":
            w.emit(w.wire.server_bind(c.login_id, t + 1200, {
                "$identity_openid": c.openid, "$identity_unionid": c.unionid}))
        return t + w.draw.seconds(20, 60)

    def _join(self, c: Customer, t: int) -> None:
        """Registration: the CRM writes the profile and binds the mobile number."""
        w = self.w
        c.joined = True
        w.profile(c, t)
        w.emit(w.wire.server_bind(c.login_id, t + 400, {"$identity_mobile": c.mobile}))

    def _rescue(self, c: Customer, t: int, channel: int, dev: Device | None) -> None:
        """After a dropped order: a coupon (half the time) and maybe a return visit."""
        d = self.w.draw
        if c.joined and d.chance(0.5):
            t += d.minutes(20, 180)
            to = CHANNELS[channel] if channel in (_APP, _MP) else "wecom"
            self.w.give_coupon(c, t, "discount", "cancel_rescue", to, 3)
            if d.chance(0.42):
                back = t + d.minutes(60, 36 * 60)
                self._session(c, back, self.w.cal.day_of(back), channel,
                              second=dev is not None and len(c.apps) > 1 and dev is c.apps[1],
                              browse=False, rescued=True)
        elif d.chance(0.06):
            back = t + d.minutes(120, 48 * 60)
            self._session(c, back, self.w.cal.day_of(back), channel, second=False,
                          browse=False, rescued=True)
