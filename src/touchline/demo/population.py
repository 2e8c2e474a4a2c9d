"""The customers: who they are, their ids and devices, and where their lifecycle goes.

Attributes are drawn in bulk with numpy; each customer then becomes a small
:class:`Customer` object holding the state the generator changes as days pass
(logins, paid membership, a held coupon, order totals). Arrays that the daily visit
schedule reads are kept on :class:`Population` and updated in place.

Lifecycle kinds:
- ``existing``: registered before the window. Regulars, high value (twice as often,
  bigger baskets), silent (rarely come) and churning (stop 30 to 60 days before the
  end).
- ``new``: join during the window; most browse anonymously first, then log in at the
  order step. A third come once or twice and fade.
- ``prospect``: browse anonymously and never sign up.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .behaviour import BEHAVIOUR
from .catalog import CITIES, CITY_WEIGHTS, STORES
from .draw import cumulative
from .wire import Device

__all__ = [
    "ANON_CHANNELS",
    "EXISTING",
    "NEVER",
    "NEW",
    "PROSPECT",
    "Coupon",
    "Customer",
    "Population",
    "build_population",
    "level_for",
]

EXISTING, NEW, PROSPECT = 0, 1, 2
NEVER = 1 << 30  # a day index past any window

_APP, _MP, _OA, _WECOM, _KIOSK = range(5)  # positions in catalog.CHANNELS
# Channels a person can use before they are a member (login-free SDKs only).
ANON_CHANNELS = (_APP, _MP, _OA)
_REGISTER_CUM = cumulative((0.30, 0.45, 0.15, 0.0, 0.10))


@dataclass(slots=True)
class Coupon:
    coupon_id: str
    coupon_type: str
    expires_ms: int
    campaign: str


@dataclass(slots=True)
class Customer:
    idx: int
    group: int
    city: str
    store: str
    gender: str
    age: int
    kind: int
    join_day: int  # -1: before the window; NEVER: never joins
    churn_day: int  # first day with no more visits (NEVER if none)
    value: int  # basket bonus: extra dishes for high-value customers
    login_id: str
    mobile: str
    openid: str
    unionid: str
    register_channel: int
    channel_cum: tuple[float, ...]
    apps: list[Device]
    mp: Device
    oa: Device
    joined: bool = False
    paid: bool = False
    plan: str = ""
    expires_ms: int = 0
    member_channel: str = "mini_program"
    total_orders: int = 0
    total_spent: float = 0.0
    level: str = "none"
    coupon: Coupon | None = None
    categories: set[str] = field(default_factory=set)

    def device(self, channel: int, second: bool) -> Device | None:
        """The SDK install a visit on ``channel`` uses (None: a server-side channel)."""
        if channel == _APP:
            return self.apps[1] if second and len(self.apps) > 1 else self.apps[0]
        if channel == _MP:
            return self.mp
        if channel == _OA:
            return self.oa
        return None


@dataclass(slots=True)
class Population:
    customers: list[Customer]
    group: npt.NDArray[np.int8]
    activity: npt.NDArray[np.float64]
    join_day: npt.NDArray[np.int64]
    churn_day: npt.NDArray[np.int64]
    # Mirrors of Customer state that the vectorised daily schedule reads.
    paid: npt.NDArray[np.bool_]
    coupon_until: npt.NDArray[np.int64]  # ms; a held coupon raises the visit rate
    # day index -> customers with a scheduled anonymous browse visit that day
    browse_days: dict[int, list[int]]


def _hex(raw: bytes) -> str:
    return raw.hex()


def _uuid(raw: bytes, upper: bool) -> str:
    h = raw.hex()
    s = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
    return s.upper() if upper else s


def _wechat_id(raw: bytes) -> str:
    # WeChat openids/unionids: 28 characters starting with "o".
    return "o" + base64.urlsafe_b64encode(raw).decode()[:27]


def build_population(rng: np.random.Generator, n: int, days: int,
                     start_ms: int) -> Population:
    g = rng.choice(3, size=n, p=[0.35, 0.40, 0.25]).astype(np.int8)
    kind = rng.choice(3, size=n, p=[0.60, 0.32, 0.08])
    city = rng.choice(len(CITIES), size=n, p=np.asarray(CITY_WEIGHTS) / sum(CITY_WEIGHTS))
    # Activity multiplier on the group's visit rate (lognormal around 1).
    activity = np.exp(0.35 * rng.standard_normal(n))
    sub = rng.random(n)
    value = np.zeros(n, dtype=np.int64)
    churn = np.full(n, NEVER, dtype=np.int64)
    join = np.full(n, -1, dtype=np.int64)
    existing = kind == EXISTING
    high = existing & (sub < 0.12)
    silent = existing & (sub >= 0.12) & (sub < 0.27)
    churning = existing & (sub >= 0.27) & (sub < 0.45)
    activity[high] *= 2.2
    value[high] = 1
    activity[silent] *= 0.12
    churn[churning] = rng.integers(max(days - 60, 1), max(days - 29, 2), size=int(churning.sum()))
    new = kind == NEW
    join[new] = rng.integers(0, max(days - 2, 1), size=int(new.sum()))
    fading = new & (rng.random(n) < 0.35)
    activity[fading] *= 0.12
    join[kind == PROSPECT] = NEVER

    login_nums = rng.choice(90_000_000, size=n, replace=False) + 10_000_000
    mobile_nums = rng.choice(1_000_000_000, size=n, replace=False)
    prefixes = ("13", "15", "17", "18", "19")
    raw = rng.bytes(n * 96)
    ages = rng.random(n)
    genders = rng.random(n)
    second_app = rng.random(n) < 0.15
    ios = rng.random(n) < 0.55
    other_logged = rng.random((n, 3)) < 0.5
    home = rng.random(n)
    register = rng.random(n)
    chan_u = rng.random(n)
    member_u = rng.random((n, 4))
    browse_n = rng.integers(1, 4, size=n)
    browse_u = rng.random((n, 4))

    stores_by_city = {c: [s.store_id for s in STORES if s.city == c] for c in CITIES}
    customers: list[Customer] = []
    browse_days: dict[int, list[int]] = {}
    for i in range(n):
        b = BEHAVIOUR[g[i]]
        ch_cum = b.channel_cum
        p = min(int(np.searchsorted(ch_cum, chan_u[i], side="right")), 4)
        weights = [0.4 * w for w in b.channels]
        weights[p] += 0.6
        r = raw[i * 96:(i + 1) * 96]
        city_name = CITIES[city[i]]
        stores = stores_by_city[city_name]
        apps = [Device("ios" if ios[i] else "android", _uuid(r[0:16], bool(ios[i])),
                       model="iPhone15,2" if ios[i] else "HUAWEI P60")]
        if second_app[i]:
            apps.append(Device("ios", _uuid(r[16:32], True), model="iPad13,4"))
        for dev in apps:
            dev.presets = {"$model": dev.model}
        mp = Device("mp", _uuid(r[32:48], False))
        oa_hex = _hex(r[48:62])
        oa = Device("js", f"{oa_hex[:14]}-{oa_hex[14:28]}-26001951-329160-{oa_hex[:14]}")
        reg = int(np.searchsorted(_REGISTER_CUM, register[i], side="right"))
        reg = min(reg, 4)
        k = int(kind[i])
        if k == EXISTING:
            # Members were already logged in on the devices of their usual channel,
            # and on about half of the others; a second (new) tablet starts anonymous.
            for ch, dev in ((_APP, apps[0]), (_MP, mp), (_OA, oa)):
                dev.logged_in = ch == p or bool(other_logged[i, ch])
        cust = Customer(
            idx=i, group=int(g[i]), city=city_name,
            store=stores[int(home[i] * len(stores))],
            gender="female" if genders[i] < 0.52 else "male",
            age=b.age[0] + int(ages[i] * (b.age[1] - b.age[0] + 1)),
            kind=k, join_day=int(join[i]), churn_day=int(churn[i]), value=int(value[i]),
            login_id=f"M{login_nums[i]:08d}",
            mobile=prefixes[mobile_nums[i] % 5] + f"{mobile_nums[i]:09d}",
            openid=_wechat_id(r[62:83]), unionid=_wechat_id(r[75:96]),
            register_channel=reg if k != EXISTING else p,
            channel_cum=cumulative(weights), apps=apps, mp=mp, oa=oa,
            joined=k == EXISTING,
        )
        if k == EXISTING:
            _history(cust, member_u[i], float(activity[i]), start_ms)
        customers.append(cust)
        # Anonymous browsing: prospects on a few random days; most new members in
        # the days before they join (kiosk registrants walk straight in).
        if k == PROSPECT:
            for j in range(int(browse_n[i]) + 1):
                browse_days.setdefault(int(browse_u[i, j] * days), []).append(i)
        elif k == NEW and reg != _KIOSK and browse_u[i, 3] < 0.75:
            for j in range(int(browse_n[i])):
                d = int(join[i]) - 1 - int(browse_u[i, j] * 6)
                if d >= 0:
                    browse_days.setdefault(d, []).append(i)
    for lst in browse_days.values():
        lst.sort()
    paid = np.array([c.paid for c in customers], dtype=np.bool_)
    return Population(customers, g, activity, join, churn, paid,
                      np.zeros(n, dtype=np.int64), browse_days)


# Typical basket per group, to give existing members a plausible order history.
_AVG_BASKET = (185.0, 42.0, 33.0)
_DAY_MS = 86_400_000


def _history(c: Customer, u: npt.NDArray[np.float64], activity: float, start_ms: int) -> None:
    """Order totals and paid membership of a member registered before the window."""
    b = BEHAVIOUR[c.group]
    u0, u1, u2, u3 = (float(x) for x in u)  # plain floats: they end up in JSON
    c.total_orders = int(activity * 14 * (0.3 + 1.4 * u0)) + 1
    c.total_spent = round(c.total_orders * _AVG_BASKET[c.group] * (0.8 + 0.4 * u1), 2)
    c.level = level_for(c.total_spent)
    if u2 < b.paid_share:
        c.paid = True
        monthly = u3 < 0.7
        c.plan = "monthly" if monthly else "annual"
        span = 30 if monthly else 365
        # u2 / paid_share is uniform in [0, 1): where in the plan the window starts.
        # Not before 04:00 of the first day, after the CRM sync has sent the profile.
        c.expires_ms = start_ms + int(u2 / b.paid_share * span * _DAY_MS) + 4 * 3_600_000
        c.member_channel = "app" if c.channel_cum[0] > 0.5 else "mini_program"


def level_for(total_spent: float) -> str:
    """Member level by lifetime spend."""
    if total_spent >= 3000:
        return "gold"
    if total_spent >= 1000:
        return "silver"
    return "none"

