"""The native protocol decoder: JSON array, single object, NDJSON, auth, rules."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchline.errors import AuthError, PayloadError
from touchline.track.decode import CollectRequest, Decoded
from touchline.track.native import decode_native
from touchline.track.sink import Project, StaticProjects

NOW = 1_800_000_000_000
PROJECTS = StaticProjects([Project("default", "wk_default"), Project("shop", "wk_shop")])


def decode(body: bytes, query: dict[str, str] | None = None,
           headers: dict[str, str] | None = None) -> Decoded:
    q = {"project": "default", "write_key": "wk_default"} if query is None else query
    return decode_native(CollectRequest("POST", "/api/v1/events", q, headers or {}, body),
                         PROJECTS, NOW)


def rec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event": "order_paid", "event_id": "o-1",
                            "time": "2027-01-15T07:59:00Z",
                            "identities": {"login_id": "u-1", "mobile": "13800000000"},
                            "properties": {"amount": 42.5}}
    base.update(over)
    return base


def test_json_array_of_every_kind() -> None:
    body = json.dumps([
        rec(),
        rec(type="profile", op="increment", properties={"orders": 1}, event=None),
        rec(type="item", op="set", item_type="dish", item_id="d-7", properties={"price": 30}),
        rec(type="link", identities={"login_id": "u-1", "openid": "wx-1"}, event=None),
        rec(type="unlink", identities={"openid": "wx-1"}, event=None),
        rec(link=True, identities={"login_id": "u-2", "cookie_id": "c-2"}),
    ]).encode()
    out = decode(body)
    assert out.errors == []
    t, p, i, link, unlink, linked_track = out.records
    assert (t.kind, t.event, t.event_id, t.time_ms, t.distinct_id) == (
        "track", "order_paid", "o-1", NOW - 60_000, "u-1")
    assert t.identities == {"login_id": "u-1", "mobile": "13800000000"} and t.link is False
    assert (p.kind, p.op, p.properties) == ("profile", "increment", {"orders": 1})
    assert (i.kind, i.item_type, i.item_id, i.identities) == ("item", "dish", "d-7", {})
    assert (link.kind, link.link) == ("link", True)
    assert (unlink.kind, unlink.identities) == ("unlink", {"openid": "wx-1"})
    assert linked_track.link is True
    assert t.source == "native"


def test_single_object_and_ndjson_with_a_broken_line() -> None:
    assert len(decode(json.dumps(rec()).encode()).records) == 1
    lines = [json.dumps(rec(event_id="a")), "{broken", "", json.dumps(rec(event_id="b"))]
    out = decode("\n".join(lines).encode())
    assert [r.event_id for r in out.records] == ["a", "b"]
    assert [(e.index, e.field) for e in out.errors] == [(1, "record")]


def test_gzip_and_basic_auth() -> None:
    token = base64.b64encode(b"wk_shop:").decode()
    out = decode(gzip.compress(json.dumps([rec()]).encode()), query={"project": "shop"},
                 headers={"authorization": f"Basic {token}"})
    assert out.project == "shop" and len(out.records) == 1


def test_auth_failures() -> None:
    body = json.dumps([rec()]).encode()
    with pytest.raises(AuthError, match="missing"):
        decode(body, query={"project": "default"})
    with pytest.raises(AuthError):
        decode(body, query={"project": "default", "write_key": "wk_shop"})
    with pytest.raises(AuthError):
        decode(body, query={"project": "ghost", "write_key": "wk_default"})
    assert decode(body, query={"write_key": "wk_shop"}).project == "shop"


def test_rules_name_the_field() -> None:
    body = json.dumps([
        rec(event="bad name"),
        rec(identities={}),
        rec(identities={"login_id": "null"}),
        rec(identities={"$weird": "x"}),
        rec(type="profile", op="increment", properties={"n": "1"}),
        rec(type="profile", op="explode"),
        rec(type="thing"),
        rec(type="link", identities={"login_id": "u"}),
        rec(time="whenever"),
        rec(properties={"event": 1}),
        rec(link="yes"),
        rec(event_id=""),
        rec(type="item", item_type="dish", item_id=3),
        [1, 2],
    ]).encode()
    out = decode(body)
    assert out.records == []
    assert [e.field for e in out.errors] == [
        "event", "identities", "identities.login_id", "identities.$weird", "properties.n", "op",
        "type", "identities", "time", "properties.event", "link", "event_id", "item_id", "record"]
    assert [e.index for e in out.errors] == list(range(14))


def test_whole_request_failures() -> None:
    for body in (b"", b"hello", b"[1, 2", b"[" * 100 + b"]" * 100):
        with pytest.raises(PayloadError):
            decode(body)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(
    st.sampled_from(["type", "event", "event_id", "time", "identities", "properties", "op",
                     "item_type", "item_id", "link"]),
    st.one_of(st.text(max_size=6), st.integers(), st.booleans(), st.none(),
              st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=4), st.integers()),
                              max_size=3)),
), max_size=5))
def test_fuzz_records_are_kept_or_reported(batch: list[dict[str, Any]]) -> None:
    out = decode(json.dumps(batch).encode())
    assert len(out.records) + len(out.errors) == len(batch)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bodies(blob: bytes) -> None:
    try:
        out = decode(blob)
    except PayloadError:
        return
    assert out.project == "default"
    assert all(r.project == "default" for r in out.records)
