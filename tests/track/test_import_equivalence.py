"""The SQL checks of the bulk path never accept what the collector refuses, and what
they accept is stored exactly as the collector would store it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from touchline.errors import InvalidInput
from touchline.track.bulk_validate import stage_sensors, validate_columns
from touchline.track.sensors import _Context, sensors_record
from touchline.track.sink import Project, StaticProjects

NOW = 1_763_800_000_000
HOUR = 3_600_000
YEAR = 365 * 24 * HOUR

CTX = _Context(projects=StaticProjects([Project("default", write_key="")]),
               request_project="default", now_ms=NOW, time_window=True,
               extra_junk=frozenset({"test"}))


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect()
    yield c
    c.close()


def mostly(good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten: most records must reach the bulk path."""
    return st.integers(0, 9).flatmap(lambda i: good if i else odd)


good_names = st.from_regex(r"[a-zA-Z_$][a-zA-Z0-9_$]{0,5}", fullmatch=True)
odd_names = st.one_of(
    st.sampled_from(["view_item", "$pageview", "_x", "a" * 100, "a" * 101, "9lives",
                     "has space", "time", "Distinct_ID", "user_group_x", "user_tagged",
                     "$is_login_id", "$project", "ok$", "é", "", "x\n", "$lib"]),
    st.text(max_size=4),
)
# Mostly valid parts, so that many records reach the bulk path.
names = mostly(good_names, odd_names)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.sampled_from(["x" * 8191, "x" * 8192]),
)
good_values = st.one_of(st.integers(-1000, 1000), st.text(max_size=10), st.booleans(),
                        st.lists(st.text(max_size=3), max_size=2))
values = mostly(good_values, st.one_of(
    scalars,
    st.lists(st.one_of(st.text(max_size=5), st.integers(-9, 9), st.sampled_from(["y" * 8192])),
             max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-9, 9), max_size=2),
))
good_ids = st.from_regex(r"[a-z][a-z0-9]{1,11}", fullmatch=True)
ids = mostly(good_ids, st.one_of(
    st.sampled_from(["u1", "anon-1", "null", " null", "'guest'", "NULL", "test", "Test ",
                     "x" * 255, "x" * 256, "", " ", "0", "-1", "a\tb", '"q"', "ok ",
                     "\x1f", "\xa0null", "guest\u3000", "\x1c"]),
    st.text(min_size=1, max_size=8), st.integers(-5, 5),
))
times = mostly(st.integers(NOW - 2 * YEAR, NOW + HOUR), st.one_of(
    st.sampled_from([NOW, NOW - 10, NOW + HOUR, NOW + HOUR + 1, NOW - 2 * YEAR,
                     NOW - 2 * YEAR - 1, 0, -1, 10**14, True, None, "1", float(NOW), NOW + 0.5]),
    st.integers(NOW - 3 * YEAR, NOW + 2 * HOUR),
))


@st.composite
def sensors_records(draw: st.DrawFn) -> dict[str, Any]:
    props = draw(st.dictionaries(names, values, max_size=3))
    if draw(st.booleans()):
        props["$is_login_id"] = draw(st.sampled_from([True, False, "true"]))
    record: dict[str, Any] = {
        "type": draw(mostly(st.just("track"), st.sampled_from(["profile_set", "track_signup", "x"]))),
        "event": draw(mostly(names, st.one_of(st.none(), st.integers(-9, 9)))),
        "distinct_id": draw(ids),
        "time": draw(times),
        "properties": draw(st.sampled_from([props] * 6 + [None, []])),
    }
    if draw(st.booleans()):
        record["lib"] = draw(st.one_of(
            st.just({"$lib": "js", "$lib_version": "1.27.11", "$lib_method": "code"}),
            st.just({"$lib": "x" * 8192, "$app_version": 3}), st.just("python")))
    for key, strategy in (
        ("time_free", st.sampled_from([True, False, "true"])),
        ("project", st.sampled_from(["default", "other", "", 5])),
        ("login_id", ids), ("anonymous_id", ids), ("_flush_time", times),
    ):
        if draw(st.integers(0, 9)) == 0:
            record[key] = draw(strategy)
    if draw(st.integers(0, 2)) == 0:  # ID-Mapping 3 clients (the JS SDK) send a map
        record["identities"] = draw(st.one_of(
            st.just({"$identity_login_id": "u1", "$identity_cookie_id": "c1"}),
            st.dictionaries(st.sampled_from(["$identity_cookie_id", "$identity_login_id",
                                             "cookie_id", "$identity_$x", "$identity_",
                                             "mobile", "a b"]), ids, max_size=1),
            st.just([])))
    return record


def collector(raw: dict[str, Any]) -> Any:
    try:
        return sensors_record({k: v for k, v in raw.items() if k != "_flush_time"}, CTX)
    except InvalidInput as exc:
        return exc


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(sensors_records(), min_size=1, max_size=8))
def test_bulk_checks_agree_with_the_collector(
    con: duckdb.DuckDBPyConnection, records: list[dict[str, Any]]
) -> None:
    lines = [orjson.dumps(r) for r in records]
    staged = stage_sensors(b"\n".join(lines), 1, "default")
    chunk = validate_columns(con, staged, now_ms=NOW, time_window=True,
                             extra_junk=CTX.extra_junk)
    accepted = {row["line"]: row for row in chunk.rows.to_pylist()}
    # Every line is either accepted in bulk or left to the collector's decoder.
    assert set(accepted) | set(chunk.others) == set(range(1, len(lines) + 1))
    assert not set(accepted) & set(chunk.others)
    for line, row in accepted.items():
        expected = collector(records[line - 1])
        assert not isinstance(expected, InvalidInput), (records[line - 1], expected)
        assert expected.kind == "track" and not expected.link
        assert list(expected.identities.items()) == [(row["id_type"], row["id_value"])]
        assert row["event_id"] == expected.event_id
        assert row["event"] == expected.event
        assert row["distinct_id"] == expected.distinct_id
        assert row["time"] == expected.time_ms
        assert orjson.loads(row["properties"]) == expected.properties


def formatted(record: dict[str, Any], style: int) -> bytes:
    """A record as different clients write it: compact, sorted, spaced, escaped."""
    if style == 0:
        return orjson.dumps(record)
    if style == 1:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    import json

    return json.dumps(record, ensure_ascii=style == 2).encode()


fast_values = st.one_of(
    values, st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 0.05, 0.001, 10.0, 12.0, 1e16, 1e-7, -0.0, 123.25, 2**63, -2**63]),
    st.text(alphabet="aé\u2028\x7f\"\\/ \x01", max_size=4),
)


@st.composite
def fast_records(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    record = draw(sensors_records())
    if draw(st.booleans()) and isinstance(record.get("properties"), dict):
        record["properties"].update(draw(st.dictionaries(names, fast_values, max_size=3)))
    if draw(st.integers(0, 4)) == 0:
        record[draw(st.sampled_from(["_track_id", "extra", "Type"]))] = draw(fast_values)
    line = formatted(record, draw(st.integers(0, 3)))
    if draw(st.integers(0, 9)) == 0:  # explicit nulls and duplicate keys vanish in a parse
        line = line[:-1] + draw(st.sampled_from([b',"n":null}', b',"time":1}', b' }']))
    return line, record


# Shrinking a failure would rerun DuckDB thousands of times: report it unshrunk.
@settings(max_examples=300, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(fast_records(), min_size=1, max_size=8))
def test_fast_path_agrees_with_the_collector(
    con: duckdb.DuckDBPyConnection, items: list[tuple[bytes, dict[str, Any]]]
) -> None:
    """What the DuckDB fast path accepts, the collector accepts and stores alike, with
    the same event id; everything else is left to the Python pass."""
    from touchline.track.bulk_json import SensorsSchema, fast_sensors, split_lines

    lines = [line for line, _ in items]
    split = split_lines(b"\n".join(lines), 1)
    result = fast_sensors(con, split, SensorsSchema(), project="default", now_ms=NOW, time_window=True,
                          extra_junk=CTX.extra_junk)
    accepted = {row["line"]: row for row in result.rows.to_pylist()}
    assert set(accepted) | {i + 1 for i in result.left} == set(range(1, len(lines) + 1))
    assert not set(accepted) & {i + 1 for i in result.left}
    for number, row in accepted.items():
        parsed = orjson.loads(lines[number - 1])
        expected = collector(parsed)
        assert not isinstance(expected, InvalidInput), (lines[number - 1], expected)
        assert expected.kind == "track" and not expected.link
        assert list(expected.identities.items()) == [(row["id_type"], row["id_value"])]
        assert row["event_id"] == expected.event_id, lines[number - 1]
        assert (row["event"], row["distinct_id"], row["time"]) == (
            expected.event, expected.distinct_id, expected.time_ms)
        assert orjson.loads(row["properties"]) == expected.properties


def test_fast_path_takes_the_common_shape(con: duckdb.DuckDBPyConnection) -> None:
    """The fast path is not vacuous: plain SDK lines go through it."""
    from touchline.track.bulk_json import SensorsSchema, fast_sensors, split_lines

    lines = [orjson.dumps({
        "type": "track", "event": "view_item", "time": NOW - i, "distinct_id": f"d{i}",
        "_flush_time": NOW, "lib": {"$lib": "js", "$lib_version": "1.2"},
        "properties": {"price": 12.5, "n": i, "tags": ["a"], "$is_login_id": i % 2 == 0}})
        for i in range(100)]
    result = fast_sensors(con, split_lines(b"\n".join(lines), 1), SensorsSchema(),
                          project="default", now_ms=NOW, time_window=True,
                          extra_junk=frozenset())
    assert result.rows.num_rows == 100 and result.left == []
    first = collector(orjson.loads(lines[0]))
    assert result.rows.column("event_id")[0].as_py() == first.event_id


@pytest.mark.parametrize("props", [
    b'{"o":{"b":1,"a":2},"x":1}',  # a nested object, its keys unsorted: same length
    b'{"o":[1,2],"x":2}',  # a list of numbers
    b'{"o":"s","x":1.0E2}',  # DuckDB writes 100.0: as long, not the line's text
    b'{"o":"s","x":1e2}',
    b'{"o":"s","x":-0}',
])
def test_fast_path_leaves_odd_leaves_to_python(
    con: duckdb.DuckDBPyConnection, props: bytes
) -> None:
    """Leaves whose DuckDB text is as long as the line's but not orjson's canonical
    text: the length check alone would accept them with a wrong event id."""
    from touchline.track.bulk_json import SensorsSchema, fast_sensors, split_lines

    line = b'{"type":"track","event":"e","time":%d,"distinct_id":"abc","properties":%s}' % (
        NOW, props)
    result = fast_sensors(con, split_lines(line, 1), SensorsSchema(), project="default",
                          now_ms=NOW, time_window=True, extra_junk=frozenset())
    assert result.rows.num_rows == 0 and result.left == [0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12))
def test_split_lines_marks_exactly_the_byte_wise_safe_lines(lines: list[bytes]) -> None:
    """Per line, as a plain reading of the rule: starts with "{", not too long, no
    control character or backslash, valid UTF-8."""
    from touchline.track.bulk_json import MAX_LINE, split_lines

    def safe(line: bytes) -> bool:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return (line.startswith(b"{") and len(line) <= MAX_LINE
                and not any(b < 0x20 or b == 0x5C for b in line))

    lines = [b"{" + line if i % 2 else line for i, line in enumerate(lines)]
    split = split_lines(b"\n".join(lines), 1)
    assert [split.line(i) for i in range(split.count)] == (lines or [b""])
    assert split.safe.tolist() == [safe(line) for line in (lines or [b""])]
