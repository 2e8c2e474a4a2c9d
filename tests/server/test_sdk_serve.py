"""The official SDKs as clients of a real `touchline serve`, checked through its API."""

from __future__ import annotations

import time
from typing import Any

import posthog
import sensorsanalytics
from segment.analytics.client import Client as SegmentClient

from serverproc import Server


def profile(server: Server, identity: str, project: str = "default") -> dict[str, Any]:
    with server.client() as c:
        r = c.get(f"/api/v1/profiles/{identity}", params={"project": project})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


def test_sensors_default_and_batch_consumers_stitch_and_profile(server: Server) -> None:
    url = f"{server.url}/sa?project=default"
    sa = sensorsanalytics.SensorsAnalytics(sensorsanalytics.DefaultConsumer(url))
    sa.track("anon-7", "view_menu", {"channel": "mini_program"})
    sa.track("anon-7", "add_to_cart", {"item_id": "D01", "price": 28})
    sa.track_signup("M7", "anon-7", {"register_channel": "mini_program"})
    sa.profile_set("M7", {"group": "family", "city": "Shanghai"}, is_login_id=True)
    sa.profile_set_once("M7", {"first_store": "S01"}, is_login_id=True)
    sa.profile_set_once("M7", {"first_store": "S99"}, is_login_id=True)
    sa.profile_increment("M7", {"orders": 2}, is_login_id=True)
    sa.profile_append("M7", {"likes": ["spicy"]}, is_login_id=True)
    sa.profile_unset("M7", ["city"], is_login_id=True)
    sa.close()
    batch = sensorsanalytics.SensorsAnalytics(sensorsanalytics.BatchConsumer(url, max_size=50))
    for i in range(120):
        batch.track("M7", "pay", {"order_id": f"o{i}", "amount": 10}, is_login_id=True)
    batch.close()
    server.wait_ingested()

    p = profile(server, "anon-7")
    assert p == profile(server, "login_id:M7")
    assert p["identities"] == {"anonymous_id": ["anon-7"], "login_id": ["M7"]}
    props = p["properties"]
    assert props["group"] == "family" and "city" not in props
    assert props["first_store"] == "S01" and props["orders"] == 2 and props["likes"] == ["spicy"]
    assert p["event_count"] == 123
    with server.client() as c:
        timeline = c.get("/api/v1/profiles/M7/events", params={"limit": 500}).json()
    events = [row[timeline["columns"].index("event")] for row in timeline["rows"]]
    assert events.count("pay") == 120 and "view_menu" in events and "$SignUp" in events
    rows = server.query("SELECT count(DISTINCT user_id), count(*) FROM events")
    assert rows == [[1, 123]]


def test_segment_client_identify_alias_and_dedupe(server: Server) -> None:
    with server.client() as c:
        key = c.post("/api/v1/projects", json={"name": "web", "write_key": "web-key"}).json()
    assert key["write_key"] == "web-key"
    errors: list[Any] = []
    client = SegmentClient("web-key", host=server.url, sync_mode=True,
                           on_error=lambda e, batch: errors.append(e))
    client.track(anonymous_id="seg-anon", event="view_menu", properties={"category": "noodles"})
    client.identify(user_id="S1", anonymous_id="seg-anon", traits={"group": "student"})
    client.track(user_id="S1", event="submit_order", properties={"amount": 42},
                 message_id="fixed-id")
    client.track(user_id="S1", event="submit_order", properties={"amount": 42},
                 message_id="fixed-id")  # a resend: stored once
    client.flush()
    assert not errors
    server.wait_ingested()
    p = profile(server, "seg-anon", project="web")
    assert p["identities"]["login_id"] == ["S1"] and p["properties"]["group"] == "student"
    rows = server.query("SELECT event, count(*) FROM events GROUP BY 1 ORDER BY 1", project="web")
    assert rows == [["submit_order", 1], ["view_menu", 1]]
    assert server.query("SELECT count(*) FROM events") == [[0]]  # nothing crossed projects


def test_posthog_client_capture_and_identify(server: Server) -> None:
    with server.client() as c:
        projects = c.get("/api/v1/projects").json()
    write_key = next(p["write_key"] for p in projects if p["name"] == "default")
    ph = posthog.Posthog(write_key, host=server.url, sync_mode=True)
    # PostHog ids carry no type: like posthog-js, mark the anonymous visitor's events.
    ph.capture("view_menu", distinct_id="ph-anon",
               properties={"channel": "app", "$is_identified": False})
    ph.capture("$identify", distinct_id="P1", properties={"$anon_distinct_id": "ph-anon"})
    ph.capture("pay", distinct_id="P1", properties={"amount": 12})
    ph.flush()
    ph.shutdown()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        server.wait_ingested()
        rows = server.query("SELECT count(DISTINCT user_id), count(*) FROM events")
        if rows[0][1] >= 3:
            break
        time.sleep(0.1)
    assert rows == [[1, 3]], rows
    assert profile(server, "ph-anon")["user_id"] == profile(server, "P1")["user_id"]
