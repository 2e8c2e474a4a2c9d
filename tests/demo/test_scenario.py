"""The scenario shows what docs/demo.md promises, in aggregate over a mid-size run."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from statistics import mean
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conftest import END_MS
from touchline.demo.calendar import DAY_MS
from touchline.demo.catalog import SLOW_STORES

TZ = ZoneInfo("Asia/Shanghai")
HOLIDAYS = {(10, d) for d in range(1, 8)}


def local(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, TZ)


def is_free_day(ms: int) -> bool:
    d = local(ms)
    return d.weekday() >= 5 or (d.month, d.day) in HOLIDAYS


class Facts:
    """The records indexed the way the checks below need them."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.group: dict[str, str] = {}
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            if r["type"] == "profile_set" and "group" in r["properties"]:
                self.group[r["distinct_id"]] = r["properties"]["group"]
            elif r["type"] == "track":
                self.events[r["event"]].append(r)
        self.by_order: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for name in ("submit_order", "pay", "cancel_order", "food_ready", "submit_feedback"):
            for r in self.events[name]:
                self.by_order[r["properties"]["order_id"]][name] = r

    def orders(self, group: str) -> list[dict[str, Any]]:
        return [r for r in self.events["submit_order"] if self.group.get(r["distinct_id"]) == group]


@pytest.fixture(scope="module")
def facts(records: list[dict[str, Any]]) -> Facts:
    return Facts(records)


def test_time_order_and_span(records: list[dict[str, Any]]) -> None:
    times = [r["time"] for r in records]
    assert times == sorted(times)
    assert times[-1] < END_MS
    assert END_MS - times[0] >= 90 * DAY_MS


def test_white_collar_lunch_on_weekdays(facts: Facts) -> None:
    orders = facts.orders("white_collar")
    lunch = [r for r in orders if not is_free_day(r["time"])
             and 11 * 60 + 30 <= local(r["time"]).hour * 60 + local(r["time"]).minute < 13 * 60 + 30]
    assert len(orders) > 2000
    assert len(lunch) / len(orders) > 0.6
    dining = Counter(r["properties"]["dining"] for r in orders)
    assert dining["delivery"] + dining["takeaway"] > 2 * dining["dine_in"]


def test_families_come_at_weekends_with_big_baskets(facts: Facts) -> None:
    orders = facts.orders("family")
    weekend = [r for r in orders if is_free_day(r["time"])]
    assert len(weekend) / len(orders) > 0.55  # weekends are 2 days in 7
    family = mean(r["properties"]["items_count"] for r in orders)
    office = mean(r["properties"]["items_count"] for r in facts.orders("white_collar"))
    assert family > 3.5 > 2.0 > office
    assert mean(r["properties"]["amount"] for r in orders) > 3 * mean(
        r["properties"]["amount"] for r in facts.orders("white_collar"))


def test_students_after_school_and_hot_items(facts: Facts) -> None:
    orders = facts.orders("student")
    school_days = [r for r in orders if not is_free_day(r["time"])]
    after_school = [r for r in school_days if 16 <= local(r["time"]).hour < 20]
    assert len(after_school) / len(school_days) > 0.6
    hot = {"D006", "D010", "D011", "D014", "D015", "D016", "D019", "D027", "D033"}
    carts: dict[str, Counter[bool]] = defaultdict(Counter)
    for r in [*_carts(facts)]:
        carts[facts.group.get(r["distinct_id"], "?")][r["properties"]["item_id"] in hot] += 1
    share = {g: c[True] / (c[True] + c[False]) for g, c in carts.items() if g != "?"}
    assert share["student"] > 0.6 > share["white_collar"]


def _carts(facts: Facts) -> list[dict[str, Any]]:
    return facts.events["add_to_cart"]


def test_discount_sensitivity(facts: Facts) -> None:
    def coupon_share(group: str) -> float:
        orders = facts.orders(group)
        return sum("coupon_id" in r["properties"] for r in orders) / len(orders)

    assert coupon_share("family") > 2 * coupon_share("white_collar")
    assert coupon_share("student") > 2 * coupon_share("white_collar")


def test_students_drop_between_order_and_pay(facts: Facts) -> None:
    def pay_rate(group: str) -> float:
        orders = facts.orders(group)
        paid = sum("pay" in facts.by_order[r["properties"]["order_id"]] for r in orders)
        return paid / len(orders)

    assert pay_rate("student") < 0.8
    assert pay_rate("family") > 0.9 and pay_rate("white_collar") > 0.9


def test_slow_stores_break_after_the_breakpoint(facts: Facts) -> None:
    breakpoint_ms = END_MS - 40 * DAY_MS
    waits: dict[tuple[bool, bool], list[float]] = defaultdict(list)
    ratings: dict[tuple[bool, bool], list[int]] = defaultdict(list)
    cancels: dict[tuple[bool, bool], list[bool]] = defaultdict(list)
    for steps in facts.by_order.values():
        order = steps["submit_order"]
        if "pay" not in steps or order["properties"]["dining"] == "delivery":
            continue
        hour = local(order["time"]).hour
        if not (11 <= hour < 13 or 17 <= hour < 20):
            continue
        key = (order["properties"]["store_id"] in SLOW_STORES, order["time"] >= breakpoint_ms)
        cancel = steps.get("cancel_order")
        cancels[key].append(cancel is not None and cancel["properties"]["reason"] == "wait_too_long")
        if "food_ready" in steps:
            waits[key].append(steps["food_ready"]["properties"]["wait_minutes"])
        if "submit_feedback" in steps:
            ratings[key].append(steps["submit_feedback"]["properties"]["rating"])
    assert mean(waits[True, True]) > 25
    for key in ((True, False), (False, True), (False, False)):
        assert mean(waits[key]) < 15
        assert mean(ratings[key]) > 3.7
        assert mean(cancels[key]) < 0.02
    assert mean(ratings[True, True]) < 2.5
    assert mean(cancels[True, True]) > 0.15


def test_anonymous_browsing_before_login(records: list[dict[str, Any]]) -> None:
    first_seen: dict[str, int] = {}
    for r in records:
        if r["type"] == "track":
            first_seen.setdefault(r["distinct_id"], r["time"])
    signups = [r for r in records if r["type"] == "track_signup"]
    before = [r for r in signups if first_seen.get(r["original_id"], r["time"]) < r["time"]]
    assert len(before) > 0.8 * len(signups) > 500
    # A member's events after login come from the login id on the same device.
    anon_ids = {r["original_id"] for r in signups}
    after = {r["distinct_id"] for r in records if r["type"] == "track"
             and r.get("anonymous_id") in anon_ids and "login_id" in r}
    assert after <= {r["distinct_id"] for r in signups}
    # Never-joining prospects leave anonymous-only ids behind.
    anonymous_only = {r["distinct_id"] for r in records if r["type"] == "track"
                      and "login_id" not in r and r["lib"]["$lib"] != "python"} - anon_ids
    assert len(anonymous_only) > 50


def test_some_members_use_two_devices(records: list[dict[str, Any]]) -> None:
    devices: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r["type"] == "track" and r["lib"]["$lib"] in ("iOS", "Android") and "login_id" in r:
            devices[r["login_id"]].add(r["anonymous_id"])
    two = sum(len(v) > 1 for v in devices.values())
    assert 0.02 * len(devices) < two < 0.3 * len(devices)


def test_lifecycle_has_new_and_fading_members(facts: Facts, records: list[dict[str, Any]]) -> None:
    start = END_MS - 100 * DAY_MS
    last_seen: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for r in facts.events["submit_order"]:
        last_seen[r["distinct_id"]] = r["time"]
        first_seen.setdefault(r["distinct_id"], r["time"])
    early = [u for u, t in first_seen.items() if t < start + 40 * DAY_MS]
    gone = [u for u in early if last_seen[u] < END_MS - 30 * DAY_MS]
    assert 0.1 < len(gone) / len(early) < 0.5
    # New members register all through the window (a mobile bind marks registration).
    joins = [r["time"] for r in records if r["type"] == "track_id_bind"
             and "$identity_mobile" in r["identities"]]
    halfway = start + 50 * DAY_MS
    assert sum(t < halfway for t in joins) > 150 and sum(t >= halfway for t in joins) > 150


def test_paid_membership_funnel(facts: Facts) -> None:
    views = {r["distinct_id"] for r in facts.events["membership_view"]}
    buys = {r["distinct_id"] for r in facts.events["membership_purchase"]}
    assert buys <= views
    assert 0.03 < len(buys) / len(views) < 0.25
    assert facts.events["membership_renew"] and facts.events["membership_expire"]
    plans = Counter(r["properties"]["plan"] for r in facts.events["membership_purchase"])
    assert plans["monthly"] > plans["annual"] > 0
    balance = [r for r in facts.events["pay"] if r["properties"]["pay_method"] == "member_balance"]
    assert len(balance) > 100


def test_dropped_orders_rescued_by_coupon(facts: Facts) -> None:
    rescue = {r["properties"]["coupon_id"]: r for r in facts.events["coupon_receive"]
              if r["properties"]["campaign"] == "cancel_rescue"}
    used = [r for r in facts.events["coupon_use"] if r["properties"]["coupon_id"] in rescue]
    assert len(rescue) > 200
    assert 0.2 * len(rescue) < len(used) < 0.7 * len(rescue)
    for r in used[:50]:
        assert r["time"] > rescue[r["properties"]["coupon_id"]]["time"]
        assert "pay" in facts.by_order[r["properties"]["order_id"]]


def test_every_event_carries_channel_and_city(facts: Facts) -> None:
    channels = {"app", "mini_program", "official_account", "wecom", "kiosk"}
    for name, evs in facts.events.items():
        for r in evs[:2000]:
            assert r["properties"]["channel"] in channels, name
            assert r["properties"]["city"], name
    arrive = Counter(r["properties"]["channel"] for name in
                     ("app_launch", "mp_launch", "oa_article_view", "wecom_chat", "kiosk_checkin")
                     for r in facts.events[name])
    assert set(arrive) == channels


def test_school_holidays_and_trend(facts: Facts) -> None:
    # The window holds the October 1-7 holiday: students come more on those weekdays
    # than on ordinary school days, and the brand grows across the window.
    def per_day(group: str, pick: Any) -> float:
        days = Counter(local(r["time"]).date() for r in facts.orders(group) if pick(r["time"]))
        return sum(days.values()) / max(len(days), 1)

    def golden_week(ms: int) -> bool:
        d = local(ms)
        return (d.month, d.day) in HOLIDAYS and d.weekday() < 5

    def school_day(ms: int) -> bool:
        return not is_free_day(ms)

    assert per_day("student", golden_week) > 1.5 * per_day("student", school_day)
    start = END_MS - 100 * DAY_MS
    orders = facts.events["submit_order"]
    first = sum(r["time"] < start + 30 * DAY_MS for r in orders)
    last = sum(r["time"] >= END_MS - 30 * DAY_MS for r in orders)
    assert last > first


def test_articles_reach_more_than_they_convert(facts: Facts) -> None:
    def conversion(arrive: str, channel: str) -> float:
        orders = sum(1 for r in facts.events["submit_order"]
                     if r["properties"]["channel"] == channel)
        return orders / len(facts.events[arrive])

    assert conversion("oa_article_view", "official_account") < 0.6 < conversion(
        "mp_launch", "mini_program")


def test_every_member_event_has_a_profile_first(records: list[dict[str, Any]]) -> None:
    profiled: set[str] = set()
    for r in records:
        if r["type"] == "profile_set" and "group" in r["properties"]:
            profiled.add(r["distinct_id"])
        elif r["type"] == "track" and r["properties"].get("$is_login_id"):
            assert r["distinct_id"] in profiled, r
