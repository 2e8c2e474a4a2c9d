"""A bandit's draw survives kill -9: the variant chosen in a committed step is the one
sent, resent and counted, whatever a restarted process would draw now.

A real child process steps users through a bandit message node and sends the messages
to a loopback webhook receiver, then is killed with SIGKILL before it records the sends
(rows stay ``sending``). The restarted side, with a different random seed, resends after
the lease: every message carries the variant the child drew and committed with the step,
and the bandit counts each send once. A child killed inside the step's transaction
leaves nothing behind: no message, no draw, no count.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
from servers import ProviderState, serve, webhook_app
from test_journey_support import pg_schema_url

from touchline.clock import VirtualClock
from touchline.orchestrate import storage
from touchline.orchestrate.bandit import ArmCounts, StateBanditStore
from touchline.orchestrate.channels import RetryPolicy, WebhookChannel
from touchline.orchestrate.content import bandit_key
from touchline.orchestrate.engine import Engine
from touchline.orchestrate.outbox import DeliveryPolicy, Outbox
from touchline.orchestrate.validate import parse_journey
from touchline.store.state import StateStore, open_state_store

SECRET = "s3cret"
NOON_SHANGHAI = int(datetime(2023, 11, 15, 4, 0, tzinfo=UTC).timestamp() * 1000)
USERS = 60

BANDIT = """
id: learn
entry: {type: api}
start: offer
nodes:
  offer:
    type: message
    channel: app
    variants:
      - {id: plain, body: "plain offer"}
      - {id: discount, body: "discount offer"}
    decision: {strategy: bandit}
goals:
  - {name: ordered, event: {event: pay}, window: 3d}
"""

# The child: step USERS users (one transaction each, or all inside one open transaction
# when told to hang there), claim and send without recording, then wait to be killed.
CHILD = """
import asyncio, sys, time
from pathlib import Path
import numpy as np
from touchline.clock import VirtualClock
from touchline.orchestrate.channels import WebhookChannel
from touchline.orchestrate.engine import Engine
from touchline.orchestrate.outbox import DeliveryPolicy, Outbox
from touchline.store.state import open_state_store

url, data, sink, users, now, where = sys.argv[1:7]
clock = VirtualClock(int(now))
store = open_state_store(url, Path(data), clock=clock)
engine = Engine(store, clock, rng=np.random.default_rng(12345))
if where == "in_step":
    with store.transaction():
        for u in range(1, int(users) + 1):
            engine.enter_api("default", "learn", u, {}, key="k")
        print("stepping", flush=True)
        time.sleep(600)
for u in range(1, int(users) + 1):
    engine.enter_api("default", "learn", u, {}, key="k")
channel = WebhookChannel({"url": sink, "secret": "s3cret", "timeout_s": 5}, clock=clock)
outbox = Outbox(store, clock, {"app": channel}, policy=DeliveryPolicy(caps=()))
batch = outbox.claim(1000)
asyncio.run(outbox.send(batch))
print(f"sent {len(batch)}", flush=True)
time.sleep(600)
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
        return
    yield from pg_schema_url()


def prepare(url: str, data: Path, clock: VirtualClock) -> StateStore:
    store = open_state_store(url, data, clock=clock)
    store.ensure_schema(storage.SCHEMA_NAME, storage.STATE_SCHEMA)
    with store.transaction() as tx:
        storage.apply_journey(tx, parse_journey(BANDIT), clock.now_ms())
    return store


def run_child(url: str, data: Path, sink: str, where: str, ready: str) -> None:
    """Start the child, wait until it says ``ready``, then kill -9 it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(data), sink, str(USERS),
         str(NOON_SHANGHAI), where], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith(ready), line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def logged_variants(store: StateStore) -> dict[int, tuple[str, str]]:
    """user -> (variant, message id) from the journey log the step wrote."""
    with store.transaction() as tx:
        rows = tx.fetchall("SELECT user_id, detail FROM journey_log WHERE kind = 'message'")
    out = {}
    for uid, detail in rows:
        d = orjson.loads(detail)
        out[int(uid)] = (d["variant"], d["message_id"])
    return out


def test_kill9_after_the_step_resends_the_drawn_variant_and_counts_once(
        url: str, tmp_path: Path) -> None:
    clock = VirtualClock(NOON_SHANGHAI)
    store = prepare(url, tmp_path, clock)
    state = ProviderState()
    with serve(webhook_app(state, SECRET), state):
        run_child(url, tmp_path, state.base_url + "/hook", "after_step", f"sent {USERS}")
        drawn = logged_variants(store)
        assert len(drawn) == USERS
        assert {v for v, _ in drawn.values()} == {"plain", "discount"}
        with store.transaction() as tx:
            rows = {int(r[0]): (r[1], r[2], r[3]) for r in tx.fetchall(
                "SELECT user_id, variant, message_id, status FROM journey_outbox")}
        assert rows == {u: (v, mid, "sending") for u, (v, mid) in drawn.items()}
        key = bandit_key("default", "learn", "offer")
        assert StateBanditStore(store).counts(key) == {}  # nothing recorded as sent yet
        first = {orjson.loads(r.body)["message_id"]: orjson.loads(r.body)
                 for r in state.requests}
        assert len(first) == USERS

        # The restart draws from another seed; re-entering changes nothing.
        clock.set(NOON_SHANGHAI + 60_000)  # past the 30 s lease
        engine = Engine(store, clock, rng=np.random.default_rng(999))
        assert not any(engine.enter_api("default", "learn", u, {}, key="k")
                       for u in range(1, USERS + 1))
        channel = WebhookChannel({"url": state.base_url + "/hook", "secret": SECRET,
                                  "timeout_s": 5}, clock=clock)
        outbox = Outbox(store, clock, {"app": channel}, policy=DeliveryPolicy(caps=()),
                        retry=RetryPolicy(max_attempts=3, initial_s=0.01))

        async def drain() -> None:
            while await outbox.run_once():
                pass

        asyncio.run(drain())
    assert state.seen_keys == {mid: 2 for _, mid in drawn.values()}
    by_id = {mid: (u, v) for u, (v, mid) in drawn.items()}
    for r in state.requests[USERS:]:
        body = orjson.loads(r.body)
        _, v = by_id[body["message_id"]]
        before = first[body["message_id"]]
        assert (body["body"], body["data"]["journey"]["variant"]) == (f"{v} offer", v)
        assert (before["body"], before["data"]) == (body["body"], body["data"])
    sends: dict[str, int] = {}
    for v, _ in drawn.values():
        sends[v] = sends.get(v, 0) + 1
    assert StateBanditStore(store).counts(key) == {
        v: ArmCounts(n, 0) for v, n in sends.items()}
    with store.transaction() as tx:
        assert tx.fetchall("SELECT DISTINCT status FROM journey_outbox") == [("sent",)]
    store.close()


def test_kill9_inside_the_step_leaves_no_draw_behind(url: str, tmp_path: Path) -> None:
    clock = VirtualClock(NOON_SHANGHAI)
    store = prepare(url, tmp_path, clock)
    run_child(url, tmp_path, "http://127.0.0.1:9/unused", "in_step", "stepping")
    with store.transaction() as tx:
        for table in ("journey_states", "journey_log", "journey_outbox", "content_bandit"):
            assert tx.fetchone(f"SELECT COUNT(*) FROM {table}")[0] == 0, table
    # The restart steps everyone afresh, once.
    engine = Engine(store, clock, rng=np.random.default_rng(999))
    assert all(engine.enter_api("default", "learn", u, {}, key="k")
               for u in range(1, USERS + 1))
    drawn = logged_variants(store)
    with store.transaction() as tx:
        rows = {int(r[0]): r[1] for r in tx.fetchall(
            "SELECT user_id, variant FROM journey_outbox")}
    assert rows == {u: v for u, (v, _) in drawn.items()} and len(rows) == USERS
    store.close()
