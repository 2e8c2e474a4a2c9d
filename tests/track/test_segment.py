"""The Segment decoder: calls, batch envelope, auth, limits, clock skew."""

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
from touchline.track.segment import decode_segment
from touchline.track.sink import Project, StaticProjects

NOW = 1_800_000_000_000  # 2027-01-15T08:00:00Z
PROJECTS = StaticProjects([Project("default", "wk_default"), Project("shop", "wk_shop")])


def iso(ms: int) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def request(path: str, body: Any, headers: dict[str, str] | None = None,
            raw: bytes | None = None) -> CollectRequest:
    data = raw if raw is not None else json.dumps(body).encode()
    return CollectRequest("POST", path, {}, headers or {}, data)


def decode(path: str, body: Any, **kw: Any) -> Decoded:
    return decode_segment(request(path, body, **kw), PROJECTS, NOW)


def msg(type_: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"type": type_, "messageId": f"m-{type_}", "userId": "u-1",
                            "anonymousId": "a-1", "timestamp": iso(NOW - 1000),
                            "context": {"library": {"name": "analytics-python", "version": "2.4.0"}}}
    base.update(over)
    return base


def test_batch_of_every_call() -> None:
    body = {"writeKey": "wk_shop", "sentAt": iso(NOW), "batch": [
        msg("track", event="Order Completed", properties={"revenue": 12.5, "Product Name": "Tea"}),
        msg("identify", traits={"email": "a@b.c", "plan": "gold"}),
        msg("page", name="Home", category="Docs", properties={"path": "/"}),
        msg("screen", name="Menu", anonymousId=None),
        msg("group", groupId="g-1", traits={"name": "Acme"}),
        msg("alias", previousId="a-1", anonymousId=None),
    ]}
    out = decode("/v1/batch", body)
    assert out.errors == [] and out.project == "shop"
    tr, ident, page, screen, group, alias = out.records
    assert (tr.kind, tr.event, tr.event_id, tr.distinct_id) == ("track", "Order Completed", "m-track", "u-1")
    assert tr.identities == {"login_id": "u-1", "anonymous_id": "a-1"}
    assert tr.link is False  # only identify and alias link
    assert tr.properties["revenue"] == 12.5 and tr.properties["$lib"] == "analytics-python"
    assert tr.time_ms == NOW - 1000 and tr.source == "segment"
    assert (ident.kind, ident.op, ident.link, ident.properties) == (
        "profile", "set", True, {"email": "a@b.c", "plan": "gold"})
    assert (page.event, page.properties["name"], page.properties["category"]) == ("$pageview", "Home", "Docs")
    assert screen.identities == {"login_id": "u-1"}
    assert (group.event, group.properties["group_id"]) == ("$group", "g-1")
    assert (alias.kind, alias.link, alias.identities) == (
        "link", True, {"login_id": "u-1", "anonymous_id": "a-1"})


def test_identify_with_one_id_is_not_a_link() -> None:
    out = decode("/v1/identify", {"writeKey": "wk_default", "userId": "u-1", "traits": {}})
    assert out.records[0].link is False and out.records[0].kind == "profile"


def test_single_call_endpoints_take_the_type_from_the_path() -> None:
    out = decode("/v1/track", {"writeKey": "wk_default", "userId": 42, "event": "Signed Up"})
    (r,) = out.records
    assert (r.kind, r.event, r.distinct_id, r.time_ms) == ("track", "Signed Up", "42", NOW)
    assert len(r.event_id) == 32  # no messageId: a content hash


def test_clock_skew_is_corrected_with_sent_at() -> None:
    # The device clock is one hour behind; the event happened 30 s before sending.
    skew = -3_600_000
    body = {"writeKey": "wk_default", "sentAt": iso(NOW + skew),
            "batch": [msg("track", event="x", timestamp=iso(NOW + skew - 30_000))]}
    assert decode("/v1/batch", body).records[0].time_ms == NOW - 30_000


def test_basic_auth_and_missing_or_wrong_key() -> None:
    token = base64.b64encode(b"wk_shop:").decode()
    out = decode("/v1/track", {"userId": "u", "event": "e"},
                 headers={"authorization": f"Basic {token}"})
    assert out.project == "shop"
    with pytest.raises(AuthError, match="missing"):
        decode("/v1/track", {"userId": "u", "event": "e"})
    with pytest.raises(AuthError, match="invalid"):
        decode("/v1/track", {"writeKey": "nope", "userId": "u", "event": "e"})


def test_gzip_body() -> None:
    body = {"writeKey": "wk_default", "batch": [msg("track", event="x")]}
    raw = gzip.compress(json.dumps(body).encode())
    out = decode("/v1/batch", None, raw=raw, headers={"content-encoding": "gzip"})
    assert len(out.records) == 1


def test_per_message_errors_keep_the_rest() -> None:
    body = {"writeKey": "wk_default", "batch": [
        msg("track", event="ok"),
        msg("track", event="x", userId=None, anonymousId=None),
        msg("track", event="x", userId="null"),
        msg("track", event="x", timestamp="last tuesday"),
        msg("track", event=""),
        msg("track", event="big", properties={"blob": "x" * 40_000}),
        msg("fly"),
        msg("alias", previousId=None),
        msg("track", event="x", properties=[1]),
        msg("track", event="ok2"),
    ]}
    out = decode("/v1/batch", body)
    assert [r.event for r in out.records] == ["ok", "ok2"]
    assert [(e.index, e.field) for e in out.errors] == [
        (1, "userId"), (2, "userId"), (3, "timestamp"), (4, "event"), (5, "record"),
        (6, "type"), (7, "previousId"), (8, "properties")]
    assert out.errors[0].rule == "userId or anonymousId is required"
    assert "32 KB" in out.errors[4].rule


def test_whole_request_failures() -> None:
    with pytest.raises(PayloadError, match="invalid JSON"):
        decode("/v1/batch", None, raw=b"{nope")
    with pytest.raises(PayloadError, match="500 KB"):
        decode("/v1/batch", {"writeKey": "wk_default", "batch": [{"x": "y" * 600_000}]})
    with pytest.raises(PayloadError, match="32 KB"):
        decode("/v1/track", {"writeKey": "wk_default", "userId": "u", "event": "e",
                             "properties": {"blob": "x" * 40_000}})
    with pytest.raises(PayloadError, match="array"):
        decode("/v1/batch", {"writeKey": "wk_default", "batch": {"a": 1}})
    with pytest.raises(PayloadError, match="object"):
        decode("/v1/batch", [1, 2])


def test_top_level_context_merges_into_each_message() -> None:
    body = {"writeKey": "wk_default", "context": {"ip": "1.2.3.4", "app": {"name": "a"}},
            "batch": [msg("track", event="x", context={"app": {"name": "b"}})]}
    ctx = decode("/v1/batch", body).records[0].properties["$context"]
    assert ctx == {"ip": "1.2.3.4", "app": {"name": "b"}}


messages = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "x"]),
    "userId": st.one_of(st.text(max_size=5), st.integers(), st.none(), st.booleans()),
    "anonymousId": st.one_of(st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2)),
    "previousId": st.one_of(st.text(max_size=5), st.none()),
    "groupId": st.one_of(st.text(max_size=5), st.none()),
    "event": st.one_of(st.text(max_size=10), st.integers(), st.none()),
    "messageId": st.one_of(st.text(max_size=300), st.integers(), st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    "timestamp": st.one_of(st.text(max_size=30), st.integers(), st.none()),
    "sentAt": st.one_of(st.text(max_size=30), st.none()),
    "properties": st.one_of(st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
                            st.text(max_size=3), st.none()),
    "traits": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=3), max_size=3),
                        st.integers()),
    "context": st.one_of(st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                         st.text(max_size=3)),
})


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=5), st.one_of(st.text(max_size=30), st.none()))
def test_fuzz_messages_are_kept_or_reported(batch: list[dict[str, Any]], sent_at: str | None) -> None:
    out = decode("/v1/batch", {"writeKey": "wk_default", "sentAt": sent_at, "batch": batch})
    assert len(out.records) + len(out.errors) == len(batch)
    for r in out.records:
        assert r.identities and r.distinct_id in r.identities.values()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["/v1/batch", "/v1/track", "/v1/x"]))
def test_fuzz_bodies(blob: bytes, path: str) -> None:
    try:
        decode(path, None, raw=blob)
    except (PayloadError, AuthError):
        pass


def test_analytics_js_short_paths_and_key_in_each_message() -> None:
    one = {"writeKey": "wk_shop", "type": "track", "event": "Clicked", "anonymousId": "a-1"}
    for path, kind in (("/v1/t", "track"), ("/v1/p", "track"), ("/v1/i", "profile")):
        out = decode(path, one)
        assert out.project == "shop" and out.records[0].kind == kind
    batch = {"batch": [dict(one, messageId="m1"), dict(one, messageId="m2")], "sentAt": iso(NOW)}
    out = decode("/v1/b", batch, headers={"content-type": "text/plain"})
    assert out.project == "shop" and [r.event_id for r in out.records] == ["m1", "m2"]
    with pytest.raises(PayloadError, match="unknown Segment call"):
        decode("/v1/zzz", one)
