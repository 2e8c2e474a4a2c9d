"""The collector routes, through Starlette's TestClient, into a MemorySink."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import urllib.parse
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from touchline.clock import VirtualClock
from touchline.config import load_settings
from touchline.errors import InvalidInput, StoreError
from touchline.server.collect import TRANSPARENT_GIF, CollectOptions, collect_router
from touchline.track.decode import java_string_hash
from touchline.track.records import Record
from touchline.track.sink import MemorySink, Project, StaticProjects

NOW = 1_800_000_000_000
PROJECTS = StaticProjects([Project("default", "wk_default"), Project("shop", "wk_shop")])


class Harness:
    def __init__(self, sink: Any = None, options: CollectOptions | None = None) -> None:
        self.sink: Any = sink or MemorySink()
        self.reported: list[tuple[str, list[InvalidInput]]] = []
        router = collect_router(sink=self.sink, projects=PROJECTS, clock=VirtualClock(NOW),
                                options=options,
                                on_errors=lambda p, e: self.reported.append((p, list(e))))
        self.client = TestClient(router, raise_server_exceptions=False)


@pytest.fixture
def h() -> Harness:
    return Harness()


def sensors_form(records: Any) -> dict[str, str]:
    field = "data_list" if isinstance(records, list) else "data"
    return {field: base64.b64encode(gzip.compress(json.dumps(records).encode())).decode(),
            "gzip": "1"}


def track(**over: Any) -> dict[str, Any]:
    rec = {"type": "track", "event": "Tap", "time": NOW, "distinct_id": "a-1", "properties": {}}
    rec.update(over)
    return rec


def assert_cors(r: Any) -> None:
    assert r.headers["access-control-allow-origin"] in ("*", "https://shop.example")
    assert "Dry-Run" in r.headers["access-control-allow-headers"]


# -- Sensors -------------------------------------------------------------------


def test_sensors_post_stores_and_answers_empty_200(h: Harness) -> None:
    r = h.client.post("/sa?project=default", data=sensors_form([track(), track(event="B")]))
    assert r.status_code == 200 and r.content == b""
    assert_cors(r)
    assert [rec.event for rec in h.sink.records] == ["Tap", "B"]


def test_sensors_gif(h: Harness) -> None:
    text = base64.b64encode(json.dumps(track()).encode()).decode()
    query = urllib.parse.urlencode({"project": "default", "data": text,
                                    "ext": f"crc={java_string_hash(text)}"})
    r = h.client.get(f"/sa.gif?{query}", headers={"origin": "https://shop.example"})
    assert r.status_code == 200
    assert r.content == TRANSPARENT_GIF and r.headers["content-type"] == "image/gif"
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    assert len(h.sink.records) == 1


def test_sensors_never_403_or_404_for_unknown_project_or_garbage(h: Harness) -> None:
    r = h.client.post("/sa?project=ghost", data=sensors_form(track()))
    assert r.status_code == 200 and h.sink.records == []
    assert h.reported[-1][1][0].field == "project"
    r = h.client.post("/sa?project=default", content=b"data=%%%garbage")
    assert r.status_code == 200
    assert h.reported[-1][0] == "sensors"


def test_sensors_good_records_survive_bad_neighbours(h: Harness) -> None:
    r = h.client.post("/sa", data=sensors_form([track(), track(event="bad name"), track(event="C")]))
    assert r.status_code == 200
    assert [rec.event for rec in h.sink.records] == ["Tap", "C"]
    (_, errors), = h.reported
    assert [(e.index, e.field) for e in errors] == [(1, "event")]


def test_sensors_debug_path(h: Harness) -> None:
    ok = h.client.post("/debug?project=default", data=sensors_form(track()))
    assert ok.status_code == 200 and len(h.sink.records) == 1
    bad = h.client.post("/debug?project=default", data=sensors_form(track(event="no good")))
    assert bad.status_code == 400
    body = bad.json()
    assert body["errors"] == [{"field": "event", "rule": "must match [a-zA-Z_$][a-zA-Z0-9_$]{0,99}",
                               "index": 0}]
    assert body["code"] and body["message"]
    garbage = h.client.post("/debug?project=default", content=b"data=!!!")
    assert garbage.status_code == 400 and garbage.json()["errors"][0]["field"] == "data"
    dry = h.client.post("/debug?project=default", data=sensors_form(track()),
                        headers={"Dry-Run": "true"})
    assert dry.status_code == 200 and len(h.sink.records) == 1


def test_options_preflight_allows_dry_run(h: Harness) -> None:
    for path in ("/sa", "/debug", "/v1/batch", "/batch/", "/api/v1/events"):
        r = h.client.options(path, headers={
            "origin": "https://shop.example", "access-control-request-method": "POST",
            "access-control-request-headers": "dry-run,content-type"})
        assert r.status_code in (200, 204)
        assert_cors(r)
        assert "POST" in r.headers["access-control-allow-methods"]


# -- Segment -------------------------------------------------------------------


def test_segment_batch_and_errors(h: Harness) -> None:
    body = {"writeKey": "wk_shop", "batch": [
        {"type": "track", "userId": "u", "event": "Order Completed", "messageId": "m1"},
        {"type": "track", "event": "no ids", "messageId": "m2"}]}
    r = h.client.post("/v1/batch", json=body)
    assert r.status_code == 200 and r.json()["success"] is True
    assert r.json()["errors"] == [{"field": "userId", "rule": "userId or anonymousId is required",
                                   "index": 1}]
    assert [rec.event_id for rec in h.sink.records] == ["m1"]
    bad = h.client.post("/v1/batch", content=b"{not json")
    assert bad.status_code == 400 and {"code", "message"} <= bad.json().keys()
    key = h.client.post("/v1/track", json={"writeKey": "nope", "userId": "u", "event": "e"})
    assert key.status_code == 401 and {"code", "message"} <= key.json().keys()
    assert_cors(key)
    big = h.client.post("/v1/batch", content=b"{" + b" " * 600_000 + b"}")
    assert big.status_code == 400 and "500 KB" in big.json()["message"]


# -- PostHog -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/e", "/e/", "/i/v0/e/", "/capture", "/track/", "/engage",
                                  "/batch", "/batch/"])
def test_posthog_paths(h: Harness, path: str) -> None:
    body = {"api_key": "wk_default", "batch": [{"event": "x", "distinct_id": "d", "uuid": "u1"}]}
    r = h.client.post(path, json=body)
    assert r.status_code == 200 and r.json() == {"status": 1}
    data = base64.b64encode(json.dumps({"event": "y", "distinct_id": "d",
                                        "properties": {"token": "wk_default"}}).encode()).decode()
    g = h.client.get(path, params={"data": data})
    assert g.status_code == 200
    assert [rec.event for rec in h.sink.records] == ["x", "y"]


def test_posthog_errors(h: Harness) -> None:
    r = h.client.post("/batch/", json={"api_key": "nope", "batch": []})
    assert r.status_code == 401 and r.json()["detail"]
    r = h.client.post("/e/?compression=lz64", content=b"data=xyz")
    assert r.status_code == 400 and "lz64" in r.json()["message"]


# -- native --------------------------------------------------------------------


def test_native(h: Harness) -> None:
    records = [{"event": "paid", "identities": {"login_id": "u-1"}, "event_id": "e1"},
               {"event": "paid", "identities": {"login_id": "null"}}]
    r = h.client.post("/api/v1/events?project=default&write_key=wk_default", json=records)
    assert r.status_code == 200
    assert r.json() == {"accepted": 1, "errors": [
        {"field": "identities.login_id", "rule": "junk id 'null' refused", "index": 1}]}
    assert [rec.event_id for rec in h.sink.records] == ["e1"]
    dry = h.client.post("/api/v1/events?project=default&write_key=wk_default", json=records,
                        headers={"Dry-Run": "true"})
    assert dry.json()["dry_run"] is True and len(h.sink.records) == 1
    assert h.client.post("/api/v1/events?project=default&write_key=x", json=records).status_code == 401
    bad = h.client.post("/api/v1/events?project=default&write_key=wk_default", content=b"nope")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "body"


# -- durability and failures ---------------------------------------------------


class SlowSink:
    def __init__(self) -> None:
        self.done: list[Record] = []

    async def submit(self, records: Sequence[Record]) -> None:
        await asyncio.sleep(0.05)
        self.done.extend(records)


class BrokenSink:
    async def submit(self, records: Sequence[Record]) -> None:
        raise StoreError("disk full")


def test_answers_only_after_the_sink_returned() -> None:
    h = Harness(SlowSink())
    r = h.client.post("/sa", data=sensors_form(track()))
    assert r.status_code == 200 and len(h.sink.done) == 1


def test_sink_failure_is_a_503_so_clients_retry() -> None:
    h = Harness(BrokenSink())
    assert h.client.post("/sa", data=sensors_form(track())).status_code == 503
    r = h.client.post("/v1/track", json={"writeKey": "wk_default", "userId": "u", "event": "e"})
    assert r.status_code == 503 and {"code", "message"} <= r.json().keys()


def test_body_limit() -> None:
    h = Harness(options=CollectOptions(max_body_bytes=1000))
    assert h.client.post("/api/v1/events?write_key=wk_default", content=b"[" + b" " * 2000 + b"]"
                         ).status_code == 413


paths = st.sampled_from(["/sa", "/sa.gif", "/debug", "/v1/batch", "/v1/track", "/v1/alias",
                         "/e/", "/batch/", "/capture", "/api/v1/events?write_key=wk_default"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths, st.binary(max_size=300), st.sampled_from(["", "gzip", "base64"]))
def test_fuzz_never_a_5xx(h: Harness, path: str, blob: bytes, encoding: str) -> None:
    body = gzip.compress(blob) if encoding == "gzip" else (
        base64.b64encode(blob) if encoding == "base64" else blob)
    r = h.client.post(path, content=body)
    assert r.status_code < 500, r.text
    assert_cors(r)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths, st.recursive(st.none() | st.integers() | st.text(max_size=5),
                           lambda i: st.lists(i, max_size=3) | st.dictionaries(
                               st.sampled_from(["batch", "writeKey", "api_key", "event", "type",
                                                "distinct_id", "userId", "data", "properties"]),
                               i, max_size=4), max_leaves=15))
def test_fuzz_json_never_a_5xx(h: Harness, path: str, value: Any) -> None:
    r = h.client.post(path, json=value)
    assert r.status_code < 500, r.text


def test_big_bodies_are_decoded_off_the_event_loop(h: Harness) -> None:
    records = [{"event": "paid", "event_id": f"e{i}", "identities": {"login_id": f"u-{i}"},
                "properties": {"note": "x" * 100}} for i in range(600)]
    body = json.dumps(records).encode()
    assert len(body) > 64 * 1024
    r = h.client.post("/api/v1/events?project=default&write_key=wk_default", content=body)
    assert r.json() == {"accepted": 600, "errors": []}
    assert [rec.event_id for rec in h.sink.records] == [f"e{i}" for i in range(600)]


def test_segment_analytics_js_path(h: Harness) -> None:
    r = h.client.post("/v1/t", content=json.dumps(
        {"writeKey": "wk_default", "event": "Clicked", "anonymousId": "a-1", "messageId": "m9"}),
        headers={"content-type": "text/plain"})
    assert r.status_code == 200 and [rec.event_id for rec in h.sink.records] == ["m9"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["/sa", "/sa.gif", "/debug", "/e/", "/i/v0/e", "/capture"]),
       st.dictionaries(st.sampled_from(["data", "data_list", "ext", "crc", "gzip", "project",
                                        "compression", "api_key", "_"]),
                       st.text(max_size=40), max_size=5))
def test_fuzz_get_queries_never_a_5xx(h: Harness, path: str, query: dict[str, str]) -> None:
    r = h.client.get(path, params=query)
    assert r.status_code < 500, r.text


def test_options_from_settings_reach_the_decoders() -> None:
    settings = load_settings("/nonexistent", env={}, sensors_time_window=False,
                             junk_ids="kiosk-1, Shared ")
    options = CollectOptions.from_settings(settings)
    assert options == CollectOptions(time_window=False,
                                     extra_junk=frozenset({"kiosk-1", "shared"}))
    h = Harness(options=options)
    old = NOW - 3 * 365 * 86_400_000
    h.client.post("/sa", data=sensors_form([track(time=old), track(distinct_id="KIOSK-1")]))
    assert [r.time_ms for r in h.sink.records] == [old]
    assert h.reported[0][1][0].field == "distinct_id"
