"""Content variants through a real runtime: REST apply (and its validation errors), API
entries, the workers delivering to a loopback webhook from channels.yaml, goals from
the on_stitched_events hook, then per-variant stats over REST and `touchline journey stats
--variants`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from servers import ProviderState, serve, webhook_app, webhook_runtime

from touchline.cli import cli
from touchline.orchestrate.hooks import on_stitched_events, register_commands, workers
from touchline.runtime import Runtime
from touchline.server.app import create_app

TOKEN = "content-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

OFFER = {
    "id": "offer",
    "entry": {"type": "api"},
    "start": "send",
    "nodes": {
        "send": {"type": "message", "channel": "app", "category": "transactional",
                 "quiet_hours": "ignore",
                 "variants": [{"id": "plain", "body": "plain {{ event.code }}"},
                              {"id": "discount", "body": "discount {{ event.code }}"}],
                 "decision": {"strategy": "bandit", "goal": "paid"}},
    },
    "goals": [{"name": "paid", "event": {"event": "pay"}, "window": "1d"}],
}


@pytest.fixture
def sink() -> Iterator[ProviderState]:
    state = ProviderState()
    with serve(webhook_app(state, "s3cret"), state):
        yield state


@pytest.fixture
def runtime(tmp_path: Path, sink: ProviderState) -> Iterator[Runtime]:
    with webhook_runtime(tmp_path, sink, ingest=False, admin_token=TOKEN) as rt:
        yield rt


def test_variants_end_to_end_rest_and_cli(runtime: Runtime, sink: ProviderState,
                                          tmp_path: Path) -> None:
    client = TestClient(create_app(runtime, start_workers=False))
    bad = {**OFFER, "nodes": {"send": {**OFFER["nodes"]["send"],  # type: ignore[dict-item]
                                       "decision": {"strategy": "bandit", "goal": "nope"}}}}
    answer = client.post("/api/v1/journeys", headers=AUTH, json={"definition": bad})
    assert answer.status_code == 400
    assert answer.json()["error"]["problems"] == [
        {"field": "nodes.send.decision.goal", "rule": "no goal named 'nope'"}]
    assert client.post("/api/v1/journeys", headers=AUTH,
                       json={"definition": OFFER}).status_code == 201
    for uid in range(1, 21):
        r = client.post("/api/v1/journeys/offer/enter", headers=AUTH,
                        json={"user_id": uid, "properties": {"code": f"C{uid}"}, "key": "k"})
        assert r.status_code < 300, r.text
    loops = workers(runtime)
    for loop in loops:
        loop.start()
    try:
        deadline = time.monotonic() + 30
        while len(sink.seen_keys) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Give the delivery loop time to record the last sends.
        time.sleep(0.5)
    finally:
        for loop in reversed(loops):
            loop.stop()
    sent = {}
    for req in sink.requests:
        m = orjson.loads(req.body)
        variant = m["data"]["journey"]["variant"]
        assert m["body"] == f"{variant} C{m['user_id']}"
        sent[int(m["user_id"])] = variant
    assert len(sent) == 20
    now = runtime.clock.now_ms()
    buyers = [u for u in sent if u % 4 == 0]
    on_stitched_events(runtime, pa.table({
        "project": ["default"] * len(buyers),
        "event_id": [f"p{u}" for u in buyers],
        "event": ["pay"] * len(buyers),
        "user_id": pa.array(buyers, pa.int64()),
        "time": pa.array([now] * len(buyers), pa.timestamp("ms")),
        "properties": ["{}"] * len(buyers),
    }))
    stats = client.get("/api/v1/journeys/offer/stats", headers=AUTH).json()
    per_variant = stats["nodes"]["send"]["variants"]
    for arm in set(sent.values()):
        n = sum(1 for v in sent.values() if v == arm)
        won = sum(1 for u in buyers if sent[u] == arm)
        assert per_variant[arm]["sent"] == n
        assert per_variant[arm]["converted"] == {"paid": won}
        assert per_variant[arm]["conversion"] == {"paid": round(won / n, 4)}
        assert per_variant[arm]["bandit"]["sends"] == n
        assert per_variant[arm]["bandit"]["conversions"] == won
    runtime.close()

    register_commands(cli)  # as main() does through the plugin hook
    res = CliRunner().invoke(cli, ["journey", "stats", "offer", "--variants",
                                   "--data", str(tmp_path)],
                             env={"TOUCHLINE_ADMIN_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].split() == ["node", "variant", "sent", "goal", "converted", "rate",
                                "p_best", "messages"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    for arm, row in rows.items():
        n = sum(1 for v in sent.values() if v == arm)
        won = sum(1 for u in buyers if sent[u] == arm)
        assert row[:5] == ["send", arm, str(n), "paid", str(won)]
        assert row[5] == f"{won / n:.2%}"
        assert row[-1] == f"sent={n}"
    assert set(rows) == set(sent.values())
