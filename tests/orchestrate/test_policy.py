"""Delivery policy: caps, priority, quiet hours, consent, de-dup, rate limits, unsubscribe."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from touchline.errors import InvalidInput
from touchline.orchestrate.policy import (
    DAY_MS,
    WEEK_MS,
    ConsentState,
    ContentTouch,
    FrequencyCap,
    QuietHours,
    SendRecord,
    SubscriptionGroup,
    TokenBucket,
    allocate,
    cap_hit,
    consent_reason,
    decide,
    dedup_reason,
    make_unsubscribe_token,
    prune_history,
    quiet_hours_decision,
    unsubscribe_url,
    verify_unsubscribe_token,
)

HOUR = 3_600_000
# 2027-01-15 12:00 in Shanghai (04:00 UTC).
NOON_SH = int(datetime(2027, 1, 15, 12, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)
CAPS = (FrequencyCap(2, DAY_MS), FrequencyCap(5, WEEK_MS), FrequencyCap(1, DAY_MS, "sms"))


def ms(tz: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp() * 1000)


# ------------------------------------------------------------------- caps


def test_two_a_day_and_five_a_week() -> None:
    now = NOON_SH
    history = [SendRecord(now - 3 * HOUR, "email"), SendRecord(now - 20 * HOUR, "wechat")]
    hit = cap_hit(CAPS, history, "push", "marketing", now)
    assert hit is not None and hit.cap.limit == 2 and hit.count == 2
    assert hit.free_at_ms == now - 20 * HOUR + DAY_MS  # when the older one leaves the day
    assert cap_hit(CAPS, history, "push", "transactional", now) is None
    assert cap_hit(CAPS, history[:1], "push", "marketing", now) is None
    week = [SendRecord(now - d * DAY_MS - HOUR, "email") for d in range(1, 6)]
    weekly = cap_hit(CAPS, week, "email", "marketing", now)
    assert weekly is not None and weekly.cap.window_ms == WEEK_MS


def test_per_channel_cap_and_transactional_not_counted() -> None:
    now = NOON_SH
    history = [SendRecord(now - HOUR, "sms"), SendRecord(now - HOUR, "sms", "transactional")]
    hit = cap_hit(CAPS, history, "sms", "marketing", now)
    assert hit is not None and hit.cap.channel == "sms"
    assert cap_hit(CAPS, history, "email", "marketing", now) is None


_records = st.lists(
    st.builds(SendRecord, at_ms=st.integers(0, 10 * DAY_MS),
              channel=st.sampled_from(["email", "sms", "push"]),
              category=st.sampled_from(["marketing", "transactional"])),
    max_size=15)


@settings(max_examples=200, deadline=None)
@given(history=_records, now=st.integers(0, 10 * DAY_MS), channel=st.sampled_from(["email", "sms"]))
def test_cap_hit_matches_a_plain_count_and_frees_when_it_says(
    history: list[SendRecord], now: int, channel: str
) -> None:
    def over(at: int) -> bool:
        for cap in CAPS:
            if cap.applies(channel, "marketing"):
                n = sum(1 for r in history if at - cap.window_ms < r.at_ms <= at
                        and cap.applies(r.channel, r.category))
                if n >= cap.limit:
                    return True
        return False

    hit = cap_hit(CAPS, history, channel, "marketing", now)
    assert (hit is not None) == over(now)
    if hit is not None:
        assert hit.free_at_ms > now
        # At free_at the binding cap has room (records in the future are not counted).
        later = [r for r in history if r.at_ms <= now]
        again = cap_hit([hit.cap], later, channel, "marketing", hit.free_at_ms)
        assert again is None
        assert cap_hit([hit.cap], later, channel, "marketing", hit.free_at_ms - 1) is not None


def test_priority_decides_who_gets_the_last_slot() -> None:
    now = NOON_SH
    history = [SendRecord(now - HOUR, "email")]
    candidates = [("promo", "email", "marketing", 1, now - 10),
                  ("renewal", "wechat", "marketing", 5, now),
                  ("receipt", "email", "transactional", 0, now)]
    allowed, held = allocate(CAPS, history, candidates, now)
    assert allowed == ["renewal", "receipt"] and held == ["promo"]


@settings(max_examples=150, deadline=None)
@given(history=_records, n=st.integers(0, 8), now=st.integers(DAY_MS, 10 * DAY_MS),
       prios=st.lists(st.integers(0, 3), min_size=8, max_size=8))
def test_allocation_never_breaks_a_cap(history: list[SendRecord], n: int, now: int,
                                       prios: list[int]) -> None:
    history = [r for r in history if r.at_ms <= now]
    cands = [(f"m{i}", ["email", "sms"][i % 2], "marketing", prios[i], i) for i in range(n)]
    allowed, held = allocate(CAPS, history, cands, now)
    assert sorted(allowed + held) == sorted(c[0] for c in cands)
    sent = history + [SendRecord(now, c[1], c[2]) for c in cands if c[0] in allowed]
    for cap in CAPS:
        inside = [r for r in sent if now - cap.window_ms < r.at_ms <= now
                  and cap.applies(r.channel, r.category)]
        new = [c for c in cands if c[0] in allowed and cap.applies(c[1], c[2])]
        assert not new or len(inside) <= cap.limit
    # A held message of top priority can only be held if a cap was full for it.
    for key in held:
        cand = next(c for c in cands if c[0] == key)
        assert cap_hit(CAPS, sent, cand[1], cand[2], now) is not None


def test_prune_keeps_what_the_longest_window_sees() -> None:
    now = 10 * DAY_MS
    history = [SendRecord(now - 8 * DAY_MS, "email"), SendRecord(now - 2 * DAY_MS, "email")]
    assert prune_history(history, CAPS, now) == history[1:]


# ------------------------------------------------------------- quiet hours

NIGHT = QuietHours(time(22, 0), time(8, 0))


def test_quiet_hours_defer_to_the_end_of_the_window_in_the_users_zone() -> None:
    late = ms("Asia/Shanghai", 2027, 1, 15, 23, 30)
    d = quiet_hours_decision(NIGHT, "Asia/Shanghai", late)
    assert d.action == "defer" and d.until_ms == ms("Asia/Shanghai", 2027, 1, 16, 8, 0)
    early = ms("Asia/Shanghai", 2027, 1, 16, 6, 0)
    assert quiet_hours_decision(NIGHT, "Asia/Shanghai", early).until_ms == ms(
        "Asia/Shanghai", 2027, 1, 16, 8, 0)
    assert quiet_hours_decision(NIGHT, "Asia/Shanghai", NOON_SH).action == "send"
    # The same instant is daytime for a user in London (15:30 there).
    assert quiet_hours_decision(NIGHT, "Europe/London", late).action == "send"


def test_quiet_hours_skip_mode_and_day_windows_and_fallback_zone() -> None:
    skip = QuietHours.parse("22:00", "08:00", "skip")
    late = ms("Asia/Shanghai", 2027, 1, 15, 23, 30)
    assert quiet_hours_decision(skip, "Asia/Shanghai", late).action == "skip"
    lunch = QuietHours.parse("12:00", "13:30")
    d = quiet_hours_decision(lunch, None, NOON_SH, default_tz="Asia/Shanghai")
    assert d.until_ms == NOON_SH + 90 * 60_000
    assert quiet_hours_decision(lunch, "Mars/Olympus", NOON_SH,
                                default_tz="Asia/Shanghai").action == "defer"
    with pytest.raises(InvalidInput) as err:
        QuietHours.parse("25:00", "08:00")
    assert err.value.field == "quiet_hours.start"
    with pytest.raises(InvalidInput):
        quiet_hours_decision(lunch, None, NOON_SH, default_tz="Nowhere/Town")


def test_quiet_hours_end_follows_daylight_saving() -> None:
    # New York springs forward on 2027-03-14; 08:00 local is 12:00 UTC that morning.
    late = ms("America/New_York", 2027, 3, 13, 23, 0)
    d = quiet_hours_decision(NIGHT, "America/New_York", late)
    assert d.until_ms == int(datetime(2027, 3, 14, 12, 0, tzinfo=UTC).timestamp() * 1000)


def test_quiet_hours_end_in_the_repeated_hour_when_clocks_fall_back() -> None:
    # New York falls back on 2027-11-07: 01:00-02:00 happens twice. At 01:10 the
    # second time (06:10 UTC), a window ending 01:30 ends at the second 01:30.
    window = QuietHours(time(0, 0), time(1, 30))
    now = int(datetime(2027, 11, 7, 6, 10, tzinfo=UTC).timestamp() * 1000)
    d = quiet_hours_decision(window, "America/New_York", now)
    assert d.action == "defer"
    assert d.until_ms == int(datetime(2027, 11, 7, 6, 30, tzinfo=UTC).timestamp() * 1000)


@settings(max_examples=300, deadline=None)
@given(now=st.integers(1_700_000_000_000, 1_900_000_000_000),
       tz=st.sampled_from(["Asia/Shanghai", "America/New_York", "Europe/London",
                           "Australia/Lord_Howe", "America/Santiago", "UTC"]),
       start=st.times(), end=st.times())
def test_deferral_lands_after_now_within_a_day_and_outside_the_window(
    now: int, tz: str, start: time, end: time
) -> None:
    assume(start != end)
    quiet = QuietHours(start.replace(microsecond=0), end.replace(microsecond=0))
    d = quiet_hours_decision(quiet, tz, now)
    if d.action == "defer":
        assert d.until_ms is not None and now < d.until_ms <= now + DAY_MS + 2 * HOUR
        assert quiet_hours_decision(quiet, tz, d.until_ms).action == "send"


# ----------------------------------------------------------------- consent

GROUPS = {
    "weekly": SubscriptionGroup("weekly"),
    "vip_news": SubscriptionGroup("vip_news", "opt_in"),
    "sms_promos": SubscriptionGroup("sms_promos", channels=frozenset({"sms"})),
}


def test_consent_rules() -> None:
    c = ConsentState()
    assert consent_reason(c, "email", "marketing", "weekly", GROUPS) is None
    assert consent_reason(c, "email", "marketing", "vip_news", GROUPS) == "not subscribed to 'vip_news'"
    assert consent_reason(ConsentState(subscribed=frozenset({"vip_news"})), "email",
                          "marketing", "vip_news", GROUPS) is None
    assert consent_reason(c, "email", "marketing", "sms_promos", GROUPS) is not None
    assert consent_reason(c, "email", "marketing", "nope", GROUPS) == "unknown subscription group 'nope'"
    no_sms = ConsentState(channels={"sms": False})
    assert consent_reason(no_sms, "sms", "marketing", "", GROUPS) == "no consent for sms"
    assert consent_reason(no_sms, "sms", "transactional", "", GROUPS) is None
    out = c.unsubscribe("weekly")
    assert consent_reason(out, "email", "marketing", "weekly", GROUPS) == "unsubscribed from 'weekly'"
    assert consent_reason(c.unsubscribe(None), "email", "marketing", "", GROUPS) is not None
    assert consent_reason(c.unsubscribe(None), "email", "transactional", "", GROUPS) is None


# ------------------------------------------------------------------ de-dup


def test_acting_on_one_channel_suppresses_the_same_content_elsewhere() -> None:
    now = NOON_SH
    touches = [ContentTouch("rescue:coupon", "wechat", "sent", now - 2 * HOUR),
               ContentTouch("rescue:coupon", "wechat", "acted", now - HOUR)]
    assert dedup_reason("rescue:coupon", "sms", touches, now) == (
        "already acted on 'rescue:coupon' via wechat")
    assert dedup_reason("renewal", "sms", touches, now) is None
    sent_only = touches[:1]
    assert dedup_reason("rescue:coupon", "sms", sent_only, now) is None
    assert dedup_reason("rescue:coupon", "wechat", sent_only, now) is not None
    assert dedup_reason("rescue:coupon", "sms", sent_only, now, suppress_sent=True) is not None
    assert dedup_reason("rescue:coupon", "sms", touches, now + WEEK_MS) is None


# ------------------------------------------------------------------ decide


def test_decide_orders_the_checks() -> None:
    late = ms("Asia/Shanghai", 2027, 1, 15, 23, 30)
    history = [SendRecord(late - HOUR, "email"), SendRecord(late - 2 * HOUR, "email")]
    base = dict(channel="email", now_ms=late, user_tz="Asia/Shanghai", quiet=NIGHT,
                caps=CAPS, history=history, groups=GROUPS, group="weekly")
    assert decide(category="marketing", **base).action == "defer"  # type: ignore[arg-type]
    assert decide(category="transactional", **base).action == "send"  # type: ignore[arg-type]
    base["quiet"] = None
    capped = decide(category="marketing", **base)  # type: ignore[arg-type]
    assert capped.action == "skip" and capped.reason.startswith("frequency cap 2")
    deferred = decide(category="marketing", cap_mode="defer", **base)  # type: ignore[arg-type]
    assert deferred.action == "defer" and deferred.until_ms == late - 2 * HOUR + DAY_MS
    gone = decide(category="marketing", consent=ConsentState(unsubscribed_all=True),
                  **base)  # type: ignore[arg-type]
    assert gone.action == "skip" and "unsubscribed" in gone.reason
    acted = [ContentTouch("k", "sms", "acted", late - HOUR)]
    dup = decide(category="transactional", content_key="k", touches=acted,
                 **base)  # type: ignore[arg-type]
    assert dup.action == "skip"


# ------------------------------------------------------------- rate limits


def test_token_bucket() -> None:
    b = TokenBucket(rate_per_s=2, burst=3)
    results = []
    for _ in range(4):
        b, ok, wait = b.take(1000)
        results.append((ok, wait))
    assert results == [(True, 0.0)] * 3 + [(False, 0.5)]
    b, ok, _ = b.take(1500)
    assert ok
    with pytest.raises(InvalidInput):
        TokenBucket(rate_per_s=0, burst=1)


@settings(max_examples=150, deadline=None)
@given(rate=st.floats(0.5, 50), burst=st.integers(1, 20),
       gaps=st.lists(st.integers(0, 400), min_size=1, max_size=80))
def test_token_bucket_never_exceeds_burst_plus_rate(rate: float, burst: int,
                                                   gaps: list[int]) -> None:
    b = TokenBucket(rate_per_s=rate, burst=burst)
    now, allowed = 0, 0
    for gap in gaps:
        now += gap
        b, ok, wait = b.take(now)
        allowed += ok
        assert ok or wait > 0
    assert allowed <= burst + rate * now / 1000 + 1e-9


# ------------------------------------------------------------- unsubscribe


@settings(max_examples=100, deadline=None)
@given(project=st.text(min_size=1, max_size=20), user=st.text(min_size=1, max_size=40),
       group=st.text(max_size=20), issued=st.integers(0, 2**42))
def test_unsubscribe_token_round_trips(project: str, user: str, group: str, issued: int) -> None:
    token = make_unsubscribe_token("k1", project=project, user_id=user, group=group,
                                   issued_ms=issued)
    claim = verify_unsubscribe_token(["k2", "k1"], token, issued + DAY_MS)
    assert (claim.project, claim.user_id, claim.group, claim.issued_ms) == (
        project, user, group, issued)
    assert all(c.isalnum() or c in "-_." for c in token)


@settings(max_examples=300, deadline=None)
@given(token=st.text(max_size=80) | st.from_regex(r"[A-Za-z0-9_-]{0,30}\.[A-Za-z0-9_-]{0,45}",
                                                  fullmatch=True))
def test_any_token_from_a_url_is_refused_cleanly(token: str) -> None:
    with pytest.raises(InvalidInput) as err:
        verify_unsubscribe_token(["k1", "k2"], token, 0)
    assert err.value.field == "token"
    assert err.value.rule in ("malformed", "bad signature")


def test_unsubscribe_token_rejections() -> None:
    token = make_unsubscribe_token("k1", project="demo", user_id="u1", issued_ms=0)
    payload, _, mac = token.partition(".")
    cases = {
        "bad signature": [("k2", token), ("k1", f"{payload}x.{mac}"), ("k1", f"{payload}.{mac[:-2]}")],
        "malformed": [("k1", "nodot"), ("k1", ".x"), ("k1", "")],
    }
    for rule, attempts in cases.items():
        for secret, tok in attempts:
            with pytest.raises(InvalidInput) as err:
                verify_unsubscribe_token(secret, tok, 1)
            assert (err.value.field, err.value.rule) == ("token", rule)
    with pytest.raises(InvalidInput) as err:
        verify_unsubscribe_token("k1", token, 400 * DAY_MS)
    assert err.value.rule == "expired"
    url = unsubscribe_url("https://x.example/u?lang=zh", "k1", project="p", user_id="u",
                          issued_ms=5)
    assert url.startswith("https://x.example/u?lang=zh&token=")
