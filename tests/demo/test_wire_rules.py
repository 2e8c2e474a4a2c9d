"""Every demo record is what a Sensors SDK sends, checked by the official SDK's own rules."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import orjson
from sensorsanalytics.sdk import SensorsAnalytics, SensorsAnalyticsIllegalDataException

from touchline.demo.junk import JUNK_RATE, RESEND_RATE
from touchline.track.records import RESERVED_PROPERTIES, is_junk_id

TYPES = {"track", "track_signup", "track_id_bind", "profile_set", "profile_set_once",
         "profile_increment", "profile_append", "item_set"}
LOGIN_ID = re.compile(r"^M\d{8}$")
CLIENT_KEYS = {"type", "time", "distinct_id", "properties", "lib", "identities",
               "anonymous_id", "_track_id", "_flush_time"}


def problems(rec: dict[str, Any]) -> list[str]:
    """What is wrong with ``rec`` by the Sensors rules (empty: a valid record)."""
    out: list[str] = []
    data = dict(rec)  # the SDK rewrites only top-level distinct_id and time
    try:
        if rec["type"] == "item_set":
            SensorsAnalytics._normalize_item_data(data)
        else:
            SensorsAnalytics._normalize_data(data)
    except SensorsAnalyticsIllegalDataException as exc:
        out.append(str(exc))
    if rec["type"] != "item_set":
        did = rec["distinct_id"]
        if is_junk_id(did):
            out.append(f"junk distinct_id {did!r}")
        # The SDK's pattern does not catch every reserved name in every position.
        out += [f"reserved {k}" for k in rec["properties"] if k in RESERVED_PROPERTIES]
        for key, value in rec.get("identities", {}).items():
            if not SensorsAnalytics.NAME_PATTERN.match(key) or is_junk_id(value):
                out.append(f"identity {key}={value!r}")
    return out


def test_types_and_shapes(records: list[dict[str, Any]]) -> None:
    kinds = Counter(r["type"] for r in records)
    assert set(kinds) == TYPES
    for r in records[:20_000]:
        assert isinstance(r["time"], int)
        assert r["lib"]["$lib"] in {"Android", "iOS", "js", "MiniProgram", "python"}
        if r["lib"]["$lib"] != "python":
            assert CLIENT_KEYS <= set(r), r
            assert 100_000_000 <= r["_track_id"] < 1_000_000_000
            assert r["_flush_time"] >= r["time"]
        else:
            assert r["project"] == "default"
        if r["type"] == "track":
            assert r["properties"]["$lib"] == r["lib"]["$lib"]
            assert "$lib_version" in r["properties"]


def test_values_are_plain_json(records: list[dict[str, Any]]) -> None:
    # orjson refuses numpy scalars: a leak from the generator's numpy draws fails here.
    assert len(orjson.dumps(records)) > 1000
    for r in records[:50_000]:
        for v in r["properties"].values():
            assert type(v) in (str, int, float, bool, list), r
            if type(v) is list:
                assert all(type(x) is str for x in v)


def test_login_ids_are_marked(records: list[dict[str, Any]]) -> None:
    # Member ids are "M" and eight digits; anonymous ids never look like that.
    marked = 0
    for r in records:
        if r["type"] == "item_set":
            continue
        is_login = LOGIN_ID.match(r["distinct_id"]) is not None
        assert bool(r["properties"].get("$is_login_id")) == is_login, r
        if "identities" in r and is_login:
            assert r["identities"]["$identity_login_id"] == r["distinct_id"]
        marked += is_login
    assert marked > 0.8 * len(records)


def test_signup_and_bind_shapes(records: list[dict[str, Any]]) -> None:
    signups = [r for r in records if r["type"] == "track_signup"]
    binds = [r for r in records if r["type"] == "track_id_bind"]
    assert signups and binds
    for r in signups:
        assert r["event"] == "$SignUp"
        assert r["original_id"] != r["distinct_id"]
        assert r["original_id"] == r["anonymous_id"] == next(
            v for k, v in r["identities"].items() if k != "$identity_login_id")
    keys = Counter(k for r in binds for k in r["identities"])
    assert keys["$identity_login_id"] == len(binds)
    assert keys["$identity_mobile"] > 0 and keys["$identity_openid"] > 0
    assert keys["$identity_unionid"] == keys["$identity_openid"]
    assert all(r["event"] == "$BindID" for r in binds)


def test_every_record_valid_except_a_little_junk(records: list[dict[str, Any]]) -> None:
    bad = [r for r in records if problems(r)]
    assert 0 < len(bad) < 0.001 * len(records)
    # The junk is the deliberate kind, at about the rate junk.py promises.
    assert len(bad) < 3 * JUNK_RATE * len(records)
    reasons = Counter(problems(r)[0].split(" ")[0] for r in bad)
    assert len(reasons) >= 3, reasons


def test_resends_are_exact_copies_but_for_flush_time(records: list[dict[str, Any]]) -> None:
    seen: dict[tuple[Any, ...], int] = {}
    resends = 0
    for r in records:
        if "_flush_time" not in r:
            continue
        key = (r["_track_id"], r["time"], r["distinct_id"], r["type"], r.get("event"))
        if key in seen:
            resends += 1
        seen[key] = r["_flush_time"]
    assert 0 < resends < 3 * RESEND_RATE * len(records)
