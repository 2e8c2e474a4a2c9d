"""The engine inside a real runtime: events through the ingest pipeline (identity
stitching included), the REST routes, saving a number as a segment, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from touchline.analyze.hooks import register_commands
from touchline.analyze.service import analyzer_for, forget
from touchline.cli import cli
from touchline.clock import VirtualClock
from touchline.config import load_settings
from touchline.orchestrate.segments import member_ids
from touchline.runtime import Runtime, open_runtime
from touchline.server.app import create_app
from touchline.track.records import Record

TOKEN = "analysis-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_790_812_800_000  # 2026-10-01T00:00:00Z
H = 3_600_000
SPEC = {"from": "2026-10-01", "to": "2026-10-03", "time_zone": "UTC",
        "steps": [{"event": "view_menu"}, {"event": "pay"}]}


def track(i: int, event: str, t: int, ids: dict[str, str], **props: Any) -> Record:
    return Record(kind="track", project="default", event_id=f"ev{i}", time_ms=t,
                  received_ms=t, source="native", event=event,
                  distinct_id=next(iter(ids.values())), identities=ids, properties=props)


def load(rt: Runtime) -> None:
    anon = {"anonymous_id": "anon-1"}
    rt.sink.submit_sync([
        track(1, "view_menu", T0, anon, channel="app"),  # before login
        Record(kind="link", project="default", event_id="l1", time_ms=T0 + 60_000,
               received_ms=T0 + 60_000, source="native",
               identities={"login_id": "u1", "anonymous_id": "anon-1"}, link=True),
        track(2, "pay", T0 + H, {"login_id": "u1"}, amount=30),
        track(3, "view_menu", T0, {"login_id": "u2"}, channel="kiosk"),
        track(4, "view_menu", T0 + 25 * H, {"login_id": "u3"}, channel="app"),
        track(5, "pay", T0 + 26 * H, {"login_id": "u3"}, amount=12),
    ])
    rt.pipeline.drain(timeout=30)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    rt = open_runtime(load_settings(tmp_path, env={}, admin_token=TOKEN),
                      clock=VirtualClock(T0 + 48 * H))
    try:
        load(rt)
    finally:
        rt.close()
    yield tmp_path


@pytest.fixture
def runtime(data_dir: Path) -> Iterator[Runtime]:
    rt = open_runtime(load_settings(data_dir, env={}, admin_token=TOKEN), ingest=False,
                      clock=VirtualClock(T0 + 48 * H))
    try:
        yield rt
    finally:
        forget(rt)
        rt.close()


def test_stitched_events_count_for_the_logged_in_user(runtime: Runtime) -> None:
    res = analyzer_for(runtime).run("funnel", SPEC)
    assert [s["users"] for s in res.to_json()["steps"]] == [3, 2]
    converted = res.users("step:2")
    assert len(converted) == 2  # u1's anonymous view_menu joined its pay


def test_rest_routes_open_numbers_and_save_segments(runtime: Runtime) -> None:
    client = TestClient(create_app(runtime, start_workers=False))
    out = client.post("/api/v1/analyze/funnel", headers=AUTH, json=SPEC)
    assert out.status_code == 200, out.text
    assert [s["users"] for s in out.json()["steps"]] == [3, 2]
    bad = client.post("/api/v1/analyze/funnel", headers=AUTH, json={**SPEC, "window": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "window"
    assert client.post("/api/v1/analyze/funnel", json=SPEC).status_code == 401
    page = client.get("/api/v1/analyze/funnel/users", headers=AUTH,
                      params={"spec": json.dumps(SPEC), "cell": "dropoff:1", "limit": 5})
    assert page.status_code == 200, page.text
    assert page.json()["total"] == 1
    saved = client.post("/api/v1/analyze/funnel/segment", headers=AUTH,
                        json={"spec": SPEC, "cell": "step:2", "name": "converted"})
    assert saved.status_code == 200, saved.text
    with runtime.state.transaction() as tx:
        members = member_ids(tx, "default", "converted")
    assert len(members) == 2
    # The saved segment splits a breakdown.
    split = client.post("/api/v1/analyze/funnel", headers=AUTH,
                        json={**SPEC, "breakdown": {"segments": ["converted"]}}).json()
    assert [s["users"] for s in split["breakdown"][0]["steps"]] == [2, 2]
    jmap = {"name": "m", "window": "1d", "stages": [
        {"name": "look", "events": ["view_menu"],
         "touchpoints": {"property": "channel", "values": ["app", "kiosk"]}},
        {"name": "buy", "events": ["pay"], "kpi": {"name": "conversion", "target": 0.9}}]}
    diag = client.post("/api/v1/maps/diagnose", headers=AUTH, json={
        "map": jmap, "from": "2026-10-01", "to": "2026-10-03", "time_zone": "UTC",
        "segment": "converted", "compare": "previous"})
    assert diag.status_code == 200, diag.text
    look = diag.json()["stages"][0]
    assert (look["reach"], look["converted"], look["lost"]) == (3, 2, 1)
    assert look["touchpoints"] == {"app": 2, "kiosk": 1}
    assert look["lost_went_to"] == [{"event": "(no further event)", "users": 1}]
    assert look["kpi"]["met"] is None and diag.json()["stages"][1]["kpi"]["met"] is False
    assert look["change"]["reach"] == 3
    assert diag.json()["breakpoints"][0]["stage"] == "look"
    lost = client.post("/api/v1/analyze/map/users", headers=AUTH, json={
        "spec": {"map": jmap, "from": "2026-10-01", "to": "2026-10-03", "time_zone": "UTC"},
        "cell": "lost:look"})
    assert lost.status_code == 200 and lost.json()["total"] == 1


def test_cli_prints_json(data_dir: Path, tmp_path: Path) -> None:
    register_commands(cli)
    runner = CliRunner()
    env = {"TOUCHLINE_ADMIN_TOKEN": TOKEN}
    res = runner.invoke(cli, ["analyze", "funnel", "--data", str(data_dir), "--spec", "-"],
                        input=json.dumps(SPEC), env=env)
    assert res.exit_code == 0, res.output
    assert [s["users"] for s in json.loads(res.output)["steps"]] == [3, 2]
    res = runner.invoke(cli, ["analyze", "funnel", "--data", str(data_dir), "--spec", "-",
                              "--cell", "step:2"], input=json.dumps(SPEC), env=env)
    assert res.exit_code == 0 and json.loads(res.output)["total"] == 2
    res = runner.invoke(cli, ["map", "diagnose", "restaurant", "--data", str(data_dir),
                              "--from", "2026-10-01", "--to", "2026-10-03"], env=env)
    assert res.exit_code == 0, res.output
    assert [s["stage"] for s in json.loads(res.output)["stages"]][:2] == ["arrive", "order"]
    bad = runner.invoke(cli, ["analyze", "retention", "--data", str(data_dir), "--spec", "-"],
                        input=json.dumps({"from": "x"}), env=env)
    assert bad.exit_code != 0 and "from" in bad.output


RANGE = {"from": "2026-10-01", "to": "2026-10-03", "time_zone": "UTC"}
KIND_SPECS: dict[str, dict[str, Any]] = {
    "events": {"events": [{"event": "view_menu", "measure": "users"}], "interval": "total"},
    "funnel": {"steps": ["view_menu", "pay"]},
    "retention": {"start": "view_menu", "return": "pay", "periods": 1},
    "paths": {"start": "view_menu", "steps": 2},
    "lifecycle": {"period": "day"},
    "distribution": {"event": "view_menu"},
    "interval": {"start": "view_menu", "end": "pay"},
    "rfm": {"event": "pay", "monetary": "amount"},
    "lifecycle_stages": {},
    "transitions": {"dates": ["2026-10-02", "2026-10-03"],
                    "model": {"kind": "lifecycle_stages"}},
}


def test_every_kind_saves_a_breakdown_number_as_a_segment(runtime: Runtime) -> None:
    """Through the REST routes: each kind splits by an event property, and a number of
    one of its parts opens as a page of users and saves as a static segment."""
    from touchline.analyze.kinds import KINDS

    from .cells import numbers

    assert set(KIND_SPECS) == set(KINDS)
    client = TestClient(create_app(runtime, start_workers=False))
    for kind, body in KIND_SPECS.items():
        spec = {**RANGE, **body, "breakdown": {"property": "channel"}}
        out = client.post(f"/api/v1/analyze/{kind}", headers=AUTH, json=spec)
        assert out.status_code == 200, (kind, out.text)
        cell, count = next((n.cell, n.count) for n in numbers(out.json())
                           if "/" in n.cell and n.count > 0 and (n.exact or kind == "events"))
        page = client.post(f"/api/v1/analyze/{kind}/users", headers=AUTH,
                           json={"spec": spec, "cell": cell, "properties": ["group"]})
        assert page.status_code == 200 and page.json()["total"] == count, (kind, page.text)
        saved = client.post(f"/api/v1/analyze/{kind}/segment", headers=AUTH,
                            json={"spec": spec, "cell": cell, "name": f"from_{kind}"})
        assert saved.status_code == 200, (kind, saved.text)
        with runtime.state.transaction() as tx:
            members = member_ids(tx, "default", f"from_{kind}")
        assert sorted(members) == sorted(u["user_id"] for u in page.json()["users"]), kind
