"""The official Python SDKs, unmodified, against a real collector on loopback."""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import posthog
import pytest
import sensorsanalytics
from segment.analytics.client import Client as SegmentClient
from segment.analytics.request import APIError

if TYPE_CHECKING:
    from conftest import Collector


def sensors(collector: Collector, consumer: str = "default", **kw: Any) -> Any:
    url = f"{collector.url}/sa?project={collector.project}"
    cls = {"default": sensorsanalytics.DefaultConsumer, "batch": sensorsanalytics.BatchConsumer,
           "debug": sensorsanalytics.DebugConsumer}[consumer]
    return sensorsanalytics.SensorsAnalytics(cls(url, **kw))


def test_sensors_default_consumer_every_call(collector: Collector) -> None:
    sa = sensors(collector)
    before = int(time.time() * 1000)
    sa.track("anon-1", "ViewDish", {"dish": "noodles", "price": 28.5, "tags": ["hot"]})
    sa.track("u-1", "Order", {"amount": 56}, is_login_id=True)
    sa.track_signup("u-1", "anon-1", {"channel": "app"})
    sa.profile_set("u-1", {"city": "Shanghai"}, is_login_id=True)
    sa.profile_set_once("u-1", {"first_store": "S01"}, is_login_id=True)
    sa.profile_increment("u-1", {"orders": 1}, is_login_id=True)
    sa.profile_append("u-1", {"likes": ["spicy"]}, is_login_id=True)
    sa.profile_unset("u-1", ["city"], is_login_id=True)
    sa.profile_delete("anon-2")
    sa.item_set("dish", "d-1", {"price": 28})
    sa.item_delete("dish", "d-1")
    login = sensorsanalytics.SensorsAnalyticsIdentity(
        sensorsanalytics.SensorsAnalyticsIdentity.LOGIN_ID, "u-1")
    mobile = sensorsanalytics.SensorsAnalyticsIdentity(
        sensorsanalytics.SensorsAnalyticsIdentity.MOBILE, "13800000000")
    sa.bind(login, mobile)
    sa.unbind(mobile)
    sa.track_by_id("Call", {"minutes": 3}, mobile)
    sa.close()
    after = int(time.time() * 1000)

    recs = collector.wait_for(14)
    assert len(recs) == 14
    view, order, signup, *profiles = recs[:9]
    assert (view.kind, view.event, view.identities, view.link) == (
        "track", "ViewDish", {"anonymous_id": "anon-1"}, False)
    assert view.properties["dish"] == "noodles" and view.properties["tags"] == ["hot"]
    assert view.properties["$lib"] == "python" and view.properties["$lib_version"] == "1.11.0"
    assert before <= view.time_ms <= after and view.project == "default"
    assert order.identities == {"login_id": "u-1"} and "$is_login_id" not in order.properties
    assert (signup.event, signup.link, signup.identities) == (
        "$SignUp", True, {"login_id": "u-1", "anonymous_id": "anon-1"})
    assert [(p.op, p.properties) for p in profiles] == [
        ("set", {"city": "Shanghai"}), ("set_once", {"first_store": "S01"}),
        ("increment", {"orders": 1}), ("append", {"likes": ["spicy"]}),
        ("unset", {"city": True}), ("delete", {})]
    assert profiles[-1].identities == {"anonymous_id": "anon-2"}
    item_set, item_delete, bind, unbind, by_id = recs[9:]
    assert (item_set.kind, item_set.op, item_set.item_type, item_set.item_id,
            item_set.properties) == ("item", "set", "dish", "d-1", {"price": 28})
    assert item_delete.op == "delete"
    assert (bind.kind, bind.event, bind.link, bind.identities) == (
        "link", "$BindID", True, {"login_id": "u-1", "mobile": "13800000000"})
    assert (unbind.kind, unbind.identities) == ("unlink", {"mobile": "13800000000"})
    assert (by_id.event, by_id.identities, by_id.link) == (
        "Call", {"mobile": "13800000000"}, False)
    assert len({r.event_id for r in recs}) == 14


def test_sensors_batch_consumer_sends_50_per_request(collector: Collector) -> None:
    sa = sensors(collector, "batch", max_size=50)
    for i in range(120):
        sa.track(f"user-{i % 7}", "Tick", {"seq": i})
    sa.close()
    recs = collector.wait_for(120)
    assert [r.properties["seq"] for r in recs] == list(range(120))


def test_sensors_past_time_and_time_free(collector: Collector) -> None:
    old = dt.datetime.now() - dt.timedelta(days=800)
    sa = sensors(collector)
    sa.track("u-1", "Old", {"$time": old})
    sa.close()
    free = sensorsanalytics.SensorsAnalytics(
        sensorsanalytics.DefaultConsumer(f"{collector.url}/sa?project=default"),
        enable_time_free=True)
    free.track("u-1", "Imported", {"$time": old})
    free.close()
    (rec,) = collector.wait_for(1)
    assert rec.event == "Imported"
    assert abs(rec.time_ms - old.timestamp() * 1000) < 1000


def test_sensors_debug_consumer(collector: Collector, capsys: pytest.CaptureFixture[str]) -> None:
    sa = sensors(collector, "debug")
    sa.track("u-1", "DebugOk", {"a": 1})
    assert collector.wait_for(1)[0].event == "DebugOk"
    # The SDK checks names itself; a junk id is the server's to refuse.
    with pytest.raises(sensorsanalytics.sdk.SensorsAnalyticsDebugException):
        sa.track("undefined", "DebugBad", {})
    out = capsys.readouterr().out
    assert "distinct_id" in out and "junk" in out
    dry = sensors(collector, "debug", write_data=False)
    dry.track("u-1", "DryRun", {})
    time.sleep(0.2)
    assert [r.event for r in collector.records()] == ["DebugOk"]


def test_sensors_unknown_project_is_accepted_and_dropped(collector: Collector) -> None:
    sa = sensorsanalytics.SensorsAnalytics(
        sensorsanalytics.DefaultConsumer(f"{collector.url}/sa?project=ghost"))
    sa.track("u-1", "Lost", {})  # must not raise: Android would resend forever
    sa.close()
    time.sleep(0.2)
    assert collector.records() == []


@pytest.mark.parametrize("gzip", [False, True])
def test_segment_every_call(collector: Collector, gzip: bool) -> None:
    errors: list[Any] = []
    client = SegmentClient(collector.write_key, host=collector.url, sync_mode=True, gzip=gzip,
                           on_error=lambda e, batch: errors.append(e), max_retries=0)
    client.identify("u-1", {"email": "a@b.c", "plan": "gold"}, anonymous_id="anon-1")
    client.track("u-1", "Order Completed", {"revenue": 56.5, "items": [{"sku": "d-1"}]})
    client.page("u-1", "Docs", "Home", {"path": "/"})
    client.screen(anonymous_id="anon-1", name="Menu")
    client.group("u-1", "g-1", {"name": "Acme"})
    client.alias("anon-1", "u-1")
    client.flush()
    recs = collector.wait_for(6)
    assert errors == []
    ident, order, page, screen, group, alias = recs
    assert (ident.kind, ident.op, ident.link, ident.identities, ident.properties) == (
        "profile", "set", True, {"login_id": "u-1", "anonymous_id": "anon-1"},
        {"email": "a@b.c", "plan": "gold"})
    assert (order.event, order.properties["revenue"], order.properties["items"]) == (
        "Order Completed", 56.5, [{"sku": "d-1"}])
    assert order.properties["$lib"] == "analytics-python"
    assert abs(order.time_ms - time.time() * 1000) < 10_000
    assert (page.event, page.properties["name"]) == ("$pageview", "Home")
    assert screen.identities == {"anonymous_id": "anon-1"}
    assert group.properties["group_id"] == "g-1"
    assert (alias.kind, alias.link, alias.identities) == (
        "link", True, {"login_id": "u-1", "anonymous_id": "anon-1"})
    assert len({r.event_id for r in recs}) == 6
    assert all(r.source == "segment" and r.project == "default" for r in recs)


def test_segment_wrong_key_is_a_clean_401(collector: Collector) -> None:
    client = SegmentClient("wrong-key", host=collector.url, sync_mode=True, max_retries=0)
    # The client parses `code` and `message` out of the reply: both must be there.
    with pytest.raises(APIError) as info:
        client.track("u-1", "Nope", {})
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    assert info.value.message == "invalid write key"
    assert collector.records() == []


@pytest.mark.parametrize("gzip", [False, True])
def test_posthog_every_call(collector: Collector, gzip: bool) -> None:
    client = posthog.Posthog(collector.write_key, host=collector.url, sync_mode=True, gzip=gzip,
                             enable_exception_autocapture=False)
    client.capture("clicked", distinct_id="u-1", properties={"button": "buy", "n": 2})
    client.set(distinct_id="u-1", properties={"plan": "gold"})
    client.set_once(distinct_id="u-1", properties={"first": "x"})
    client.alias(previous_id="anon-1", distinct_id="u-1")
    client.group_identify("company", "acme", {"size": 10}, distinct_id="u-1")
    client.flush()
    client.shutdown()
    recs = collector.wait_for(5)
    clicked, set_, once, alias, group = recs
    assert (clicked.kind, clicked.event, clicked.identities) == (
        "track", "clicked", {"login_id": "u-1"})
    assert clicked.properties["button"] == "buy" and clicked.properties["$lib"] == "posthog-python"
    assert abs(clicked.time_ms - time.time() * 1000) < 10_000
    assert (set_.kind, set_.op, set_.properties) == ("profile", "set", {"plan": "gold"})
    assert (once.op, once.properties) == ("set_once", {"first": "x"})
    assert (alias.kind, alias.link, alias.identities) == (
        "link", True, {"login_id": "u-1", "anonymous_id": "anon-1"})
    assert group.event == "$groupidentify"
    assert all(r.source == "posthog" for r in recs)
