"""The PostHog capture decoder: payload encodings, shapes, keys, identities."""

from __future__ import annotations

import base64
import gzip
import json
import urllib.parse
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchline.errors import AuthError, PayloadError
from touchline.track.decode import CollectRequest, Decoded
from touchline.track.posthog import decode_posthog
from touchline.track.sink import Project, StaticProjects

NOW = 1_800_000_000_000
PROJECTS = StaticProjects([Project("default", "phc_default"), Project("shop", "phc_shop")])


def iso(ms: int) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def decode(body: bytes = b"", query: dict[str, str] | None = None,
           headers: dict[str, str] | None = None, method: str = "POST",
           path: str = "/batch/") -> Decoded:
    return decode_posthog(CollectRequest(method, path, query or {}, headers or {}, body),
                          PROJECTS, NOW)


def ev(event: str = "clicked", **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event": event, "distinct_id": "u-1", "uuid": f"id-{event}",
                            "timestamp": iso(NOW - 2000),
                            "properties": {"$lib": "posthog-python", "button": "buy"}}
    base.update(over)
    return base


def test_python_sdk_batch_shape() -> None:
    body = json.dumps({"api_key": "phc_shop", "sent_at": iso(NOW), "batch": [ev()]}).encode()
    out = decode(body, headers={"content-type": "application/json"})
    (r,) = out.records
    assert out.project == "shop"
    assert (r.kind, r.event, r.event_id, r.distinct_id) == ("track", "clicked", "id-clicked", "u-1")
    assert r.identities == {"login_id": "u-1"}
    assert r.time_ms == NOW - 2000 and r.source == "posthog"
    assert r.properties == {"$lib": "posthog-python", "button": "buy"}


def test_every_encoding_decodes_to_the_same_event() -> None:
    payload = json.dumps([ev(properties={"token": "phc_default"})]).encode()
    b64 = base64.b64encode(payload).decode()
    gz = gzip.compress(payload)
    variants = [
        decode(payload),
        decode(gz, query={"compression": "gzip-js"}),
        decode(gz, headers={"content-encoding": "gzip"}),
        decode(gz, query={"compression": "base64"}),  # wrong hint: magic bytes win
        decode(urllib.parse.urlencode({"data": b64}).encode(),
               headers={"content-type": "application/x-www-form-urlencoded"}),
        decode(urllib.parse.urlencode({"data": b64, "compression": "base64"}).encode()),
        decode(query={"data": b64}, method="GET", path="/e/"),
        decode(query={"data": base64.b64encode(gz).decode()}, method="GET", path="/e"),
        decode(b64.encode(), query={"compression": "base64"}),
    ]
    for out in variants:
        assert [(r.event, r.distinct_id) for r in out.records] == [("clicked", "u-1")]


def test_lz64_is_refused_clearly() -> None:
    with pytest.raises(PayloadError) as info:
        decode(b"data=N4Igzg", query={"compression": "lz64"})
    assert info.value.field == "compression" and "lz64" in info.value.rule


def test_keys_from_every_place_and_auth_failures() -> None:
    one = json.dumps(ev()).encode()
    assert decode(one, query={"token": "phc_shop"}).project == "shop"
    assert decode(one, headers={"authorization": "Bearer phc_shop"}).project == "shop"
    assert decode(json.dumps(ev(api_key="phc_shop")).encode()).project == "shop"
    assert decode(json.dumps(ev(properties={"token": "phc_shop"})).encode()).project == "shop"
    with pytest.raises(AuthError, match="missing"):
        decode(one)
    with pytest.raises(AuthError, match="invalid"):
        decode(one, query={"api_key": "nope"})


def test_identify_and_alias_link_and_person_properties_become_profile_records() -> None:
    batch = [
        ev("$identify", distinct_id="u-1",
           properties={"$anon_distinct_id": "anon-1", "$set": {"email": "a@b.c"},
                       "$set_once": {"first_seen": "x"}}),
        ev("$create_alias", distinct_id="anon-2", properties={"alias": "u-1", "distinct_id": "anon-2"}),
        {"event": "$set", "distinct_id": "u-1", "uuid": "s-1", "$set": {"plan": "gold"},
         "properties": {"$unset": ["old"]}},
    ]
    out = decode(json.dumps({"api_key": "phc_default", "batch": batch}).encode())
    assert out.errors == []
    ident, ident_set, ident_once, alias, setp, unset = out.records
    assert (ident.kind, ident.link, ident.identities) == (
        "track", True, {"login_id": "u-1", "anonymous_id": "anon-1"})
    assert "$set" not in ident.properties
    assert (ident_set.kind, ident_set.op, ident_set.properties) == ("profile", "set", {"email": "a@b.c"})
    assert ident_set.event_id == "id-$identify:set"
    assert (ident_once.op, ident_once.properties) == ("set_once", {"first_seen": "x"})
    assert (alias.kind, alias.link, alias.identities) == (
        "link", True, {"login_id": "u-1", "anonymous_id": "anon-2"})
    assert (setp.kind, setp.op, setp.properties) == ("profile", "set", {"plan": "gold"})
    assert (unset.op, unset.properties) == ("unset", {"old": True})


def test_anonymous_events_of_posthog_js() -> None:
    body = json.dumps([
        ev(distinct_id="0190-dev", properties={"$device_id": "0190-dev", "token": "phc_default"}),
        ev(distinct_id="0190-x", properties={"$is_identified": False}),
    ]).encode()
    out = decode(body)
    assert [r.identities for r in out.records] == [{"anonymous_id": "0190-dev"},
                                                   {"anonymous_id": "0190-x"}]
    assert not any(r.link for r in out.records)


def test_time_offset_and_sent_at() -> None:
    no_ts = {k: v for k, v in ev().items() if k != "timestamp"}
    out = decode(json.dumps([dict(no_ts, offset=5000), no_ts]).encode(),
                 query={"api_key": "phc_default"})
    assert [r.time_ms for r in out.records] == [NOW - 5000, NOW]
    skewed = {"api_key": "phc_default", "sent_at": iso(NOW + 60_000),
              "batch": [ev(timestamp=iso(NOW + 50_000))]}
    assert decode(json.dumps(skewed).encode()).records[0].time_ms == NOW - 10_000
    # posthog-js sends its clock as `_` in the query string.
    out = decode(json.dumps([ev(timestamp=iso(NOW + 50_000))]).encode(),
                 query={"api_key": "phc_default", "_": str(NOW + 60_000)})
    assert out.records[0].time_ms == NOW - 10_000


def test_bad_events_are_reported_and_the_rest_kept() -> None:
    batch = [ev(), ev(distinct_id=None), ev(distinct_id="undefined"), ev(event=""),
             ev(timestamp="soon"), ev("$create_alias", properties={}), 7, ev(uuid=5), ev("ok")]
    out = decode(json.dumps({"api_key": "phc_default", "batch": batch}).encode())
    assert [r.event for r in out.records] == ["clicked", "ok"]
    assert [(e.index, e.field) for e in out.errors] == [
        (1, "distinct_id"), (2, "distinct_id"), (3, "event"), (4, "timestamp"),
        (5, "properties.alias"), (6, "record"), (7, "uuid")]


def test_whole_request_failures() -> None:
    for body, query in ((b"", {}), (b"{bad", {}), (b"data=!!!", {}), (b"bm9wZQ==", {}),
                        (json.dumps({"api_key": "phc_default", "batch": 3}).encode(), {}),
                        (b"42", {"api_key": "phc_default"})):
        with pytest.raises(PayloadError):
            decode(body, query=query)


events = st.fixed_dictionaries({}, optional={
    "event": st.one_of(st.sampled_from(["$identify", "$create_alias", "$set", "x"]),
                       st.text(max_size=5), st.none(), st.integers()),
    "distinct_id": st.one_of(st.text(max_size=5), st.integers(), st.none(), st.booleans()),
    "uuid": st.one_of(st.text(max_size=5), st.integers(), st.none()),
    "timestamp": st.one_of(st.text(max_size=25), st.integers(), st.none()),
    "offset": st.one_of(st.integers(), st.text(max_size=3)),
    "$set": st.one_of(st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                      st.integers()),
    "properties": st.one_of(st.fixed_dictionaries({}, optional={
        "$anon_distinct_id": st.one_of(st.text(max_size=4), st.integers(), st.none()),
        "alias": st.one_of(st.text(max_size=4), st.none()),
        "$set": st.one_of(st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                          st.text(max_size=2)),
        "$unset": st.one_of(st.lists(st.text(max_size=3) | st.integers(), max_size=2),
                            st.text(max_size=2)),
        "$device_id": st.text(max_size=3),
    }), st.text(max_size=3), st.none()),
})


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=5))
def test_fuzz_events_are_kept_or_reported(batch: list[dict[str, Any]]) -> None:
    out = decode(json.dumps({"api_key": "phc_default", "batch": batch}).encode())
    refused = {e.index for e in out.errors}
    assert len(refused) == len(out.errors)
    assert len(refused) <= len(batch)
    for r in out.records:
        assert r.identities and r.distinct_id


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["", "gzip-js", "base64", "lz64"]),
       st.booleans())
def test_fuzz_bodies(blob: bytes, compression: str, as_query: bool) -> None:
    query = {"compression": compression} if compression else {}
    if as_query:
        query["data"] = blob.decode("latin-1")
    try:
        decode(b"" if as_query else blob, query=query)
    except (PayloadError, AuthError):
        pass
