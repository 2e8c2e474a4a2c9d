"""The shared decoding helpers: base64, gzip, forms, JSON limits, the Sensors crc."""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchline.errors import InvalidInput, PayloadError
from touchline.track.decode import (
    MAX_JSON_DEPTH,
    b64decode,
    basic_auth_user,
    content_hash,
    gunzip_if_magic,
    java_string_hash,
    json_depth,
    loads_json,
    parse_form,
)
from touchline.track.validate import (
    LENIENT_RULES,
    STRICT_RULES,
    check_id,
    check_profile_properties,
    check_properties,
    check_time_window,
    order_identities,
    parse_time,
    skew_corrected,
)


def test_b64decode_accepts_every_variant_clients_send() -> None:
    data = bytes(range(256))
    std = base64.b64encode(data).decode()
    assert b64decode(std, "data") == data
    assert b64decode(std.rstrip("="), "data") == data
    assert b64decode(base64.urlsafe_b64encode(data).decode(), "data") == data
    # A '+' that went through a form decoder unescaped arrives as a space.
    assert b64decode(std.replace("+", " "), "data") == data
    assert b64decode("  " + std[:40] + "\n" + std[40:] + "\n", "data") == data


def test_b64decode_refuses_garbage_naming_the_field() -> None:
    with pytest.raises(PayloadError) as info:
        b64decode("not*base64!", "data_list")
    assert info.value.field == "data_list"
    assert "base64" in info.value.rule


def test_gunzip_by_magic_only() -> None:
    assert gunzip_if_magic(b'{"a":1}', "body") == b'{"a":1}'
    assert gunzip_if_magic(gzip.compress(b'{"a":1}'), "body") == b'{"a":1}'
    # Two gzip members back to back, as `cat a.gz b.gz` makes.
    assert gunzip_if_magic(gzip.compress(b"ab") + gzip.compress(b"cd"), "body") == b"abcd"


def test_gunzip_refuses_truncated_corrupt_and_bombs() -> None:
    packed = gzip.compress(b"x" * 10_000)
    with pytest.raises(PayloadError, match="truncated"):
        gunzip_if_magic(packed[:-12], "body")
    with pytest.raises(PayloadError, match="not valid gzip"):
        gunzip_if_magic(b"\x1f\x8b" + b"\x00" * 30, "body")
    with pytest.raises(PayloadError, match="decompressed size"):
        gunzip_if_magic(gzip.compress(b"0" * 5_000_000), "body", limit=1_000_000)


def test_loads_json_limits_depth_and_reports_invalid_json() -> None:
    assert loads_json(b'{"a":[1,{"b":2}]}', "body") == {"a": [1, {"b": 2}]}
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(PayloadError, match="nested deeper"):
        loads_json(deep, "body")
    with pytest.raises(PayloadError, match="invalid JSON"):
        loads_json(b"{'a': 1}", "body")
    with pytest.raises(PayloadError, match="invalid JSON"):
        loads_json(b'{"a": "\xff"}', "body")  # not UTF-8
    with pytest.raises(PayloadError):
        loads_json("[" * 5000 + "]" * 5000, "body")


def test_json_depth() -> None:
    assert json_depth(1) == 0
    assert json_depth({}) == 1
    assert json_depth({"a": [1, {"b": []}]}) == 4


def test_parse_form_and_non_utf8() -> None:
    assert parse_form(b"data=abc%2B%3D&gzip=1&empty=") == {"data": "abc+=", "gzip": "1", "empty": ""}
    with pytest.raises(PayloadError, match="UTF-8"):
        parse_form(b"data=\xff\xfe")


def test_java_string_hash_matches_java() -> None:
    # Values of Java's "...".hashCode().
    assert java_string_hash("") == 0
    assert java_string_hash("abc") == 96354
    assert java_string_hash("hello world") == 1794106052
    # Overflow wraps to a signed 32-bit value, as in Java.
    assert java_string_hash("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") == -1830856614


def test_content_hash_ignores_key_order() -> None:
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_basic_auth_user() -> None:
    token = base64.b64encode(b"wk_123:").decode()
    assert basic_auth_user(f"Basic {token}") == "wk_123"
    assert basic_auth_user("Bearer abc") is None
    assert basic_auth_user("Basic %%%") is None
    assert basic_auth_user(None) is None


def test_check_id_rules() -> None:
    assert check_id("u1", "distinct_id") == "u1"
    assert check_id(42, "distinct_id") == "42"
    for junk in ("", "null", "undefined", " None ", '"anonymous"', "0", "-1", "[object Object]"):
        with pytest.raises(InvalidInput) as info:
            check_id(junk, "distinct_id")
        assert info.value.field == "distinct_id"
    with pytest.raises(InvalidInput, match="255"):
        check_id("x" * 256, "distinct_id")
    with pytest.raises(InvalidInput):
        check_id("kiosk-1", "distinct_id", frozenset({"kiosk-1"}))
    with pytest.raises(InvalidInput):
        check_id(True, "distinct_id")
    with pytest.raises(InvalidInput):
        check_id({"a": 1}, "distinct_id")


def test_strict_property_rules_name_the_field_and_the_rule() -> None:
    cases = [
        ({"bad name": 1}, "properties.bad name", "must match"),
        ({"9lives": 1}, "properties.9lives", "must match"),
        ({"time": 1}, "properties.time", "reserved"),
        ({"Event": 1}, "properties.Event", "reserved"),
        ({"user_group_x": 1}, "properties.user_group_x", "reserved"),
        ({"s": "x" * 8192}, "properties.s", "8191"),
        ({"tags": ["a", 1]}, "properties.tags.1", "strings"),
        ({"obj": {"a": 1}}, "properties.obj", "objects"),
    ]
    for props, field, rule in cases:
        with pytest.raises(InvalidInput) as info:
            check_properties(props, "properties", STRICT_RULES)
        assert info.value.field == field
        assert rule in info.value.rule
    ok = {"$os": "iOS", "price": 1.5, "n": 3, "flag": True, "tags": ["a", "b"], "none": None,
          "s": "x" * 8191}
    assert check_properties(ok, "properties", STRICT_RULES) == ok


def test_lenient_rules_accept_segment_and_posthog_shapes() -> None:
    props = {"Product Name": "Tea", "id": 3, "nested": {"a": [1, {"b": 2}]}, "$set": {"x": 1}}
    assert check_properties(props, "properties", LENIENT_RULES) == props
    with pytest.raises(InvalidInput):
        check_properties("nope", "properties", LENIENT_RULES)


def test_profile_operations_check_their_values() -> None:
    assert check_profile_properties("increment", {"n": 2, "m": -1.5}, "properties", STRICT_RULES)
    with pytest.raises(InvalidInput) as info:
        check_profile_properties("increment", {"n": "2"}, "properties", STRICT_RULES)
    assert (info.value.field, info.value.rule) == ("properties.n", "increment value must be a number")
    with pytest.raises(InvalidInput, match="number"):
        check_profile_properties("increment", {"n": True}, "properties", STRICT_RULES)
    with pytest.raises(InvalidInput, match="list of strings"):
        check_profile_properties("append", {"tags": "a"}, "properties", STRICT_RULES)
    assert check_profile_properties("unset", {"a": 1}, "properties", STRICT_RULES) == {"a": True}
    assert check_profile_properties("delete", {"a": 1}, "properties", STRICT_RULES) == {}


def test_parse_time() -> None:
    assert parse_time("2024-01-01T00:00:00.123Z", "timestamp") == 1704067200123
    assert parse_time("2024-01-01T08:00:00+08:00", "timestamp") == 1704067200000
    assert parse_time("2024-01-01T00:00:00", "timestamp") == 1704067200000
    assert parse_time(1704067200123, "timestamp") == 1704067200123
    for bad in ("yesterday", "2024-13-01", True, None, {"a": 1}, float("nan"), -1,
                "0001-01-01T00:00:00Z"):
        with pytest.raises(InvalidInput) as info:
            parse_time(bad, "timestamp")
        assert info.value.field == "timestamp"


def test_time_window() -> None:
    now = 1_800_000_000_000
    check_time_window(now + 3_599_000, now)
    check_time_window(now - 700 * 86_400_000, now)
    with pytest.raises(InvalidInput, match="future"):
        check_time_window(now + 3_601_000, now)
    with pytest.raises(InvalidInput, match="past"):
        check_time_window(now - 731 * 86_400_000, now)


def test_order_identities_puts_the_most_trusted_first() -> None:
    ids = order_identities({"cookie_id": "c", "employee_no": "e", "login_id": "l", "mobile": "m",
                            "android_id": "a"})
    assert list(ids) == ["login_id", "mobile", "employee_no", "android_id", "cookie_id"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decoders_only_raise_payload_errors(data: bytes) -> None:
    for fn in (lambda: b64decode(data, "d"), lambda: gunzip_if_magic(data, "d"),
               lambda: gunzip_if_magic(b"\x1f\x8b" + data, "d"), lambda: loads_json(data, "d"),
               lambda: parse_form(data)):
        try:
            fn()
        except PayloadError as exc:
            assert exc.field and exc.rule


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_fuzz_json_round_trip_through_every_transport_layer(value: object) -> None:
    text = json.dumps(value)
    packed = base64.b64encode(gzip.compress(text.encode())).decode()
    assert loads_json(gunzip_if_magic(b64decode(packed, "d"), "d"), "d") == json.loads(text)


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from([STRICT_RULES, LENIENT_RULES]))
def test_fuzz_property_checks_only_raise_invalid_input(value: object, rules: object) -> None:
    try:
        check_properties(value, "properties", rules)  # type: ignore[arg-type]
    except InvalidInput as exc:
        assert exc.field.startswith("properties")
    for op in ("set", "increment", "append", "unset"):
        try:
            check_profile_properties(op, value, "properties", STRICT_RULES)
        except InvalidInput:
            pass


def test_skew_correction() -> None:
    now = 1_800_000_000_000
    # Client clock 1 h slow, event 30 s before the send.
    assert skew_corrected(now - 3_600_000 - 30_000, now - 3_600_000, now) == now - 30_000
    # A send time before the event is nonsense: keep the event time.
    assert skew_corrected(now - 10, now - 20, now) == now - 10
    assert skew_corrected(5, 10**13, now) == 0
