"""The Sensors Analytics decoder: transports, record types, identities, rules."""

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
from touchline.track.decode import CollectRequest, Decoded, DecodeOptions, java_string_hash
from touchline.track.raw import RawBatch, is_raw_entry
from touchline.track.sensors import decode_sensors, decode_sensors_raw, sensors_raw_batch
from touchline.track.sink import Project, StaticProjects

NOW = 1_800_000_000_000
PROJECTS = StaticProjects([Project("default", "wk_default"), Project("shop", "wk_shop")])


def python_form(records: Any) -> bytes:
    """What the Python SDK posts: data or data_list, base64(gzip(json)), gzip=1."""
    field = "data_list" if isinstance(records, list) else "data"
    packed = base64.b64encode(gzip.compress(json.dumps(records).encode())).decode()
    return urllib.parse.urlencode({field: packed, "gzip": 1}).encode()


def js_query(record: dict[str, Any], project: str = "default") -> dict[str, str]:
    """What the JS SDK puts in the image URL: base64(utf-8 json) and ext=crc=N."""
    text = base64.b64encode(json.dumps(record).encode()).decode()
    return {"project": project, "data": text, "ext": f"crc={java_string_hash(text)}"}


def post(body: bytes, project: str | None = "default", **kw: Any) -> Decoded:
    query = {"project": project} if project else {}
    req = CollectRequest("POST", "/sa", query, kw.pop("headers", {}), body)
    return decode_sensors(req, PROJECTS, NOW, **kw)


def track(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "type": "track", "event": "ViewProduct", "time": NOW - 1000, "distinct_id": "a-1",
        "properties": {"price": 9.5, "$os": "iOS"},
        "lib": {"$lib": "python", "$lib_version": "1.11.0", "$lib_method": "code"},
    }
    rec.update(over)
    return rec


def test_python_default_consumer_track() -> None:
    out = post(python_form(track()))
    assert out.errors == []
    (r,) = out.records
    assert (r.kind, r.project, r.event, r.distinct_id) == ("track", "default", "ViewProduct", "a-1")
    assert r.identities == {"anonymous_id": "a-1"}
    assert r.link is False
    assert r.time_ms == NOW - 1000
    assert r.received_ms == NOW
    assert r.source == "sensors"
    assert r.properties == {"price": 9.5, "$os": "iOS", "$lib": "python",
                            "$lib_version": "1.11.0", "$lib_method": "code"}


def test_is_login_id_marks_a_login_id_and_is_not_stored() -> None:
    (r,) = post(python_form(track(properties={"$is_login_id": True, "a": 1}))).records
    assert r.identities == {"login_id": "a-1"}
    assert "$is_login_id" not in r.properties


def test_batch_keeps_good_records_and_reports_the_bad_by_index_field_and_rule() -> None:
    batch = [
        track(),
        track(event="bad name"),
        track(properties={"time": 1}),
        track(distinct_id="undefined"),
        {"type": "profile_increment", "time": NOW, "distinct_id": "a-1", "properties": {"n": "x"}},
        {"type": "nope", "time": NOW, "distinct_id": "a-1"},
        "not an object",
        track(time=NOW + 2 * 3_600_000),
        track(event="Second"),
    ]
    out = post(python_form(batch))
    assert [r.event for r in out.records] == ["ViewProduct", "Second"]
    got = [(e.index, e.field) for e in out.errors]
    assert got == [(1, "event"), (2, "properties.time"), (3, "distinct_id"), (4, "properties.n"),
                   (5, "type"), (6, "record"), (7, "time")]
    assert "reserved" in out.errors[1].rule
    assert "junk" in out.errors[2].rule
    assert "future" in out.errors[6].rule


def test_time_free_and_disabled_window_keep_old_events() -> None:
    old = NOW - 3 * 365 * 86_400_000
    assert post(python_form(track(time=old))).errors[0].field == "time"
    assert post(python_form(track(time=old, time_free=True))).records[0].time_ms == old
    assert post(python_form(track(time=old)), time_window=False).records[0].time_ms == old


def test_flush_time_corrects_the_client_clock_and_resends_share_an_event_id() -> None:
    # The client clock is 10 minutes fast; the event happened 5 s before the send.
    skew = 600_000
    first = track(time=NOW + skew - 5000, _flush_time=NOW + skew, _track_id=123456789)
    resend = dict(first, _flush_time=NOW + skew + 60_000)
    a = post(python_form(first)).records[0]
    b = post(python_form(resend)).records[0]
    assert a.time_ms == NOW - 5000
    assert a.event_id == b.event_id
    other = post(python_form(dict(first, _track_id=987654321))).records[0]
    assert other.event_id != a.event_id


def test_a_flush_time_before_the_event_is_ignored() -> None:
    (r,) = post(python_form(track(time=NOW - 5000, _flush_time=NOW - 9000))).records
    assert r.time_ms == NOW - 5000


def test_js_image_mode_get_with_crc() -> None:
    rec = track(identities={"$identity_cookie_id": "c-1", "$identity_anonymous_id": "c-1"},
                distinct_id="c-1", lib={"$lib": "js", "$lib_method": "code", "$lib_version": "1.27.11"})
    req = CollectRequest("GET", "/sa.gif", js_query(rec), {}, b"")
    (r,) = decode_sensors(req, PROJECTS, NOW).records
    assert r.identities == {"cookie_id": "c-1", "anonymous_id": "c-1"}
    assert r.link is False
    assert r.properties["$lib"] == "js"


def test_js_crc_mismatch_refuses_the_truncated_payload() -> None:
    query = js_query(track())
    query["data"] = query["data"][:-8]
    with pytest.raises(PayloadError) as info:
        decode_sensors(CollectRequest("GET", "/sa.gif", query, {}, b""), PROJECTS, NOW)
    assert info.value.field == "ext.crc"


def test_android_style_crc_form_field() -> None:
    text = base64.encodebytes(gzip.compress(json.dumps([track()]).encode())).decode()
    assert text.endswith("\n")
    body = urllib.parse.urlencode({"crc": java_string_hash(text), "gzip": 1, "data_list": text})
    assert len(post(body.encode()).records) == 1
    bad = urllib.parse.urlencode({"crc": java_string_hash(text) + 1, "data_list": text})
    with pytest.raises(PayloadError):
        post(bad.encode())


def test_js_beacon_text_plain_and_ajax_form_and_batch_send() -> None:
    rec = track()
    form = urllib.parse.urlencode(js_query(rec)).encode()
    beacon = CollectRequest("POST", "/sa.gif", {}, {"content-type": "text/plain;charset=UTF-8"},
                            form)
    assert len(decode_sensors(beacon, PROJECTS, NOW).records) == 1
    text = base64.b64encode(json.dumps([rec, track(event="B")]).encode()).decode()
    batch = CollectRequest("POST", "/sa.gif", {"project": "default"}, {},
                           b"data_list=" + urllib.parse.quote(text, safe="").encode())
    assert [r.event for r in decode_sensors(batch, PROJECTS, NOW).records] == ["ViewProduct", "B"]


def test_js_logged_in_event_is_a_link_and_signup_links_the_anonymous_id() -> None:
    ids = {"$identity_cookie_id": "c-1", "$identity_login_id": "u-9", "$identity_anonymous_id": "c-1"}
    (r,) = post(python_form(track(identities=ids, distinct_id="u-9", login_id="u-9",
                                  anonymous_id="c-1"))).records
    assert list(r.identities) == ["login_id", "cookie_id", "anonymous_id"]
    assert r.link is True
    signup = {"type": "track_signup", "event": "$SignUp", "time": NOW, "distinct_id": "u-9",
              "original_id": "c-1", "properties": {}}
    (s,) = post(python_form(signup)).records
    assert (s.kind, s.event, s.link) == ("track", "$SignUp", True)
    assert s.identities == {"login_id": "u-9", "anonymous_id": "c-1"}
    bad = dict(signup, original_id="null")
    assert post(python_form(bad)).errors[0].field == "original_id"


def test_id_mapping_3_bind_unbind_and_track_by_id() -> None:
    bind = {"type": "track_id_bind", "event": "$BindID", "time": NOW,
            "distinct_id": "u-1", "properties": {"$is_login_id": True},
            "identities": {"$identity_login_id": "u-1", "$identity_mobile": "13800000000",
                           "$identity_email": "a@b.c"}}
    (b,) = post(python_form(bind)).records
    assert (b.kind, b.event, b.link) == ("link", "$BindID", True)
    assert b.identities == {"login_id": "u-1", "mobile": "13800000000", "email": "a@b.c"}
    unbind = {"type": "track_id_unbind", "event": "$UnbindID", "time": NOW,
              "distinct_id": "$identity_mobile+13800000000", "properties": {},
              "identities": {"$identity_mobile": "13800000000"}}
    (u,) = post(python_form(unbind)).records
    assert (u.kind, u.identities) == ("unlink", {"mobile": "13800000000"})
    lonely = dict(bind, identities={"$identity_mobile": "13800000000"})
    assert post(python_form(lonely)).errors[0].field == "identities"
    junk = dict(bind, identities={"$identity_login_id": "u-1", "$identity_mobile": "null"})
    assert post(python_form(junk)).errors[0].field == "identities.$identity_mobile"


def test_wechat_mini_program_identities_map_to_openid_and_unionid() -> None:
    ids = {"$identity_mp_openid": "o-1", "$identity_mp_unionid": "un-1",
           "$identity_login_id": "u-1", "$identity_employee_no": "E7"}
    (r,) = post(python_form(track(identities=ids, distinct_id="u-1"))).records
    assert r.identities == {"login_id": "u-1", "unionid": "un-1", "openid": "o-1",
                            "employee_no": "E7"}
    assert r.link is False  # no device or browser id: nothing anonymous to link


def test_profile_operations() -> None:
    def prof(type_: str, props: dict[str, Any]) -> dict[str, Any]:
        return {"type": type_, "time": NOW, "distinct_id": "u-1",
                "properties": {**props, "$is_login_id": True}}

    out = post(python_form([
        prof("profile_set", {"city": "Shanghai"}),
        prof("profile_set_once", {"first": "x"}),
        prof("profile_increment", {"visits": 2}),
        prof("profile_append", {"tags": ["a", "b"]}),
        prof("profile_unset", {"city": True}),
        prof("profile_delete", {}),
        prof("profile_append", {"tags": "a"}),
    ]))
    assert [(r.kind, r.op, r.properties) for r in out.records] == [
        ("profile", "set", {"city": "Shanghai"}),
        ("profile", "set_once", {"first": "x"}),
        ("profile", "increment", {"visits": 2}),
        ("profile", "append", {"tags": ["a", "b"]}),
        ("profile", "unset", {"city": True}),
        ("profile", "delete", {}),
    ]
    assert all(r.identities == {"login_id": "u-1"} for r in out.records)
    assert [(e.index, e.field) for e in out.errors] == [(6, "properties.tags")]


def test_items() -> None:
    out = post(python_form([
        {"type": "item_set", "time": NOW, "item_type": "dish", "item_id": "d-1",
         "properties": {"price": 12}},
        {"type": "item_delete", "time": NOW, "item_type": "dish", "item_id": "d-1"},
        {"type": "item_set", "time": NOW, "item_type": "bad type", "item_id": "d-1"},
        {"type": "item_set", "time": NOW, "item_type": "dish", "item_id": ""},
    ]))
    assert [(r.kind, r.op, r.item_type, r.item_id, r.properties) for r in out.records] == [
        ("item", "set", "dish", "d-1", {"price": 12}), ("item", "delete", "dish", "d-1", {})]
    assert out.records[0].identities == {} and out.records[0].distinct_id is None
    assert [e.field for e in out.errors] == ["item_type", "item_id"]


def test_project_from_record_then_query_unknown_refused() -> None:
    out = post(python_form([track(project="shop"), track(), track(project="nope")]), project=None)
    assert [r.project for r in out.records] == ["shop", "default"]
    assert (out.errors[0].index, out.errors[0].field) == (2, "project")
    unknown = post(python_form(track()), project="ghost")
    assert unknown.records == [] and unknown.errors[0].field == "project"


def test_dry_run_header_is_reported() -> None:
    out = post(python_form(track()), headers={"dry-run": "true"})
    assert out.dry_run is True and len(out.records) == 1


def test_extra_junk_ids() -> None:
    out = post(python_form(track(distinct_id="kiosk")), extra_junk=frozenset({"kiosk"}))
    assert out.errors[0].field == "distinct_id"


def test_whole_payload_failures_raise_payload_error() -> None:
    for body in (b"", b"gzip=1", b"data=%%%", b"data=bm90IGpzb24=", b"data=MTIz",
                 b"data_list=" + base64.b64encode(b"\x1f\x8b\x08\x00garbage")):
        with pytest.raises(PayloadError):
            post(body)


record_values = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "track_signup", "track_id_bind", "track_id_unbind",
                                 "profile_set", "profile_increment", "profile_append",
                                 "profile_unset", "profile_delete", "item_set", "x"]),
        "event": st.one_of(st.text(max_size=10), st.integers(), st.none()),
        "time": st.one_of(st.integers(min_value=-10, max_value=NOW * 2), st.floats(allow_nan=False, allow_infinity=False), st.text()),
        "_flush_time": st.one_of(st.integers(), st.text()),
        "distinct_id": st.one_of(st.text(max_size=300), st.integers(), st.none(), st.booleans()),
        "original_id": st.one_of(st.text(max_size=5), st.none()),
        "properties": st.one_of(st.dictionaries(st.text(max_size=8), st.one_of(
            st.text(max_size=5), st.integers(), st.lists(st.integers() | st.text(), max_size=3),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)), max_size=4),
            st.lists(st.integers(), max_size=2), st.text(max_size=3)),
        "identities": st.one_of(st.dictionaries(st.text(max_size=20), st.one_of(
            st.text(max_size=5), st.integers(), st.none()), max_size=3), st.text(max_size=3)),
        "item_type": st.one_of(st.text(max_size=5), st.integers()),
        "item_id": st.one_of(st.text(max_size=5), st.integers(), st.none()),
        "project": st.one_of(st.sampled_from(["default", "shop", "ghost"]), st.integers()),
        "time_free": st.one_of(st.booleans(), st.text(max_size=3)),
        "lib": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5)), st.text()),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(record_values, max_size=5))
def test_fuzz_records_every_one_is_kept_or_reported(batch: list[dict[str, Any]]) -> None:
    out = post(python_form(batch))
    kept = len(out.records)
    assert kept + len(out.errors) == len(batch)
    assert sorted(e.index for e in out.errors if e.index is not None) == sorted(
        {e.index for e in out.errors if e.index is not None})
    for r in out.records:
        assert r.kind in ("track", "profile", "item", "link", "unlink")
        if r.kind != "item":
            assert r.identities and r.distinct_id


fuzz_bodies = st.builds(
    lambda blob, field, b64: blob if field == "raw" else urllib.parse.urlencode(
        {field: base64.b64encode(blob).decode() if b64 else blob.decode("latin-1")}).encode(),
    st.binary(max_size=200), st.sampled_from(["data", "data_list", "raw"]), st.booleans())


@settings(max_examples=300, deadline=None)
@given(fuzz_bodies)
def test_fuzz_bodies_raise_nothing_but_payload_errors(body: bytes) -> None:
    try:
        out = post(body)
    except (PayloadError, AuthError):
        return
    assert len(out.records) + len(out.errors) >= 0


CONTROL = {"$is_login_id", "$project", "$token"}
names = st.from_regex(r"\A[a-zA-Z_$][a-zA-Z0-9_$]{0,20}\Z").filter(
    lambda n: n.lower() not in {"distinct_id", "original_id", "time", "properties", "id",
                                "first_id", "second_id", "users", "events", "event",
                                "event_id", "device_id", "user_id", "date", "datetime"}
    and not n.lower().startswith(("user_group", "user_tag")) and n not in CONTROL)
values = st.one_of(st.text(max_size=30), st.integers(-(2**53), 2**53), st.booleans(), st.none(),
                   st.floats(allow_nan=False, allow_infinity=False),
                   st.lists(st.text(max_size=10), max_size=3))
ids = st.text(min_size=1, max_size=40).filter(lambda v: v.strip().strip("\"'").strip().lower()
                                              not in {"", "anonymous", "guest", "null", "none",
                                                      "undefined", "0", "-1", "nan", "true",
                                                      "false", "[object object]", "nil",
                                                      "unknown", "(null)", "<null>"})


@settings(max_examples=150, deadline=None)
@given(names, ids, st.dictionaries(names, values, max_size=6),
       st.integers(NOW - 86_400_000, NOW), st.sampled_from(["python", "image", "beacon", "raw"]))
def test_fuzz_valid_records_decode_alike_through_every_transport(
    event: str, distinct: str, props: dict[str, Any], when: int, transport: str
) -> None:
    rec = {"type": "track", "event": event, "time": when, "distinct_id": distinct,
           "properties": props}
    if transport == "python":
        out = post(python_form([rec]))
    elif transport == "image":
        out = decode_sensors(CollectRequest("GET", "/sa.gif", js_query(rec), {}, b""), PROJECTS, NOW)
    elif transport == "beacon":
        out = post(urllib.parse.urlencode(js_query(rec)).encode(), project=None)
    else:
        out = post(json.dumps([rec]).encode())
    assert out.errors == []
    (r,) = out.records
    assert (r.event, r.distinct_id, r.time_ms, r.identities) == (
        event, distinct, when, {"anonymous_id": distinct})
    assert r.properties == props
    assert r.event_id == post(python_form(rec)).records[0].event_id


# -- requests logged undecoded (the collector's path in front of the durable log) --------


def logged_then_decoded(body: bytes, project: str | None = "default", **kw: Any) -> Decoded:
    """What the pipeline makes of a request the collector wrote to the log undecoded."""
    req = CollectRequest("POST", "/sa", {"project": project} if project else {}, {}, body)
    payload = sensors_raw_batch(req, NOW).encode()
    assert is_raw_entry(payload)
    return decode_sensors_raw(RawBatch.decode(payload), PROJECTS, DecodeOptions(**kw))


@settings(max_examples=300, deadline=None)
@given(st.lists(record_values, max_size=5), st.sampled_from(["default", "shop", "ghost", None]))
def test_logged_batches_decode_exactly_as_the_collector_would(
    batch: list[dict[str, Any]], project: str | None
) -> None:
    at_once = post(python_form(batch), project)
    later = logged_then_decoded(python_form(batch), project)
    assert later.records == at_once.records
    assert [(e.index, e.field, e.rule) for e in later.errors] == [
        (e.index, e.field, e.rule) for e in at_once.errors]


def test_logged_batches_follow_the_decoding_options() -> None:
    old = track(time=NOW - 3 * 365 * 86_400_000, distinct_id="KIOSK-1")
    assert len(logged_then_decoded(python_form([old])).errors) == 1
    out = logged_then_decoded(python_form([old]), time_window=False,
                              extra_junk=frozenset({"kiosk-1"}))
    assert [(e.index, e.field) for e in out.errors] == [(0, "distinct_id")]


def test_a_record_nested_past_the_serializer_is_refused_alone() -> None:
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    out = logged_then_decoded(python_form([track(), track(extra=deep), track(event="B")]))
    assert [r.event for r in out.records] == ["ViewProduct", "B"]
    assert [(e.index, e.field) for e in out.errors] == [(1, "record")]


@settings(max_examples=300, deadline=None)
@given(fuzz_bodies)
def test_fuzz_logged_path_raises_nothing_but_payload_errors(body: bytes) -> None:
    try:
        out = logged_then_decoded(body)
    except PayloadError:
        return
    assert all(e.index is not None for e in out.errors)
