"""A journey worker process for the reliability tests (run with ``python -m`` style path).

Usage: python journey_worker_proc.py STATE_URL DATA_DIR SINK_URL SECONDS [timers|all]

Runs the timer loop (and, with ``all``, the delivery loop to a webhook sink) against a
real state store until SECONDS pass or it is killed, then prints its transition count.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from touchline.clock import SystemClock
from touchline.orchestrate import storage
from touchline.orchestrate.channels import RetryPolicy, WebhookChannel
from touchline.orchestrate.engine import Engine
from touchline.orchestrate.outbox import DeliveryPolicy, Outbox
from touchline.orchestrate.worker import DeliveryWorker, JourneyWorker
from touchline.store.state import open_state_store

SECRET = "s3cret"


def main() -> None:
    url, data, sink, seconds, mode = sys.argv[1:6]
    clock = SystemClock()
    store = open_state_store(url, Path(data), clock=clock)
    store.ensure_schema(storage.SCHEMA_NAME, storage.STATE_SCHEMA)
    engine = Engine(store, clock)
    timers = JourneyWorker(engine, batch=1000, signals=False)
    loops: list[JourneyWorker | DeliveryWorker] = [timers]
    if mode == "all":
        channel = WebhookChannel({"url": sink, "secret": SECRET, "timeout_s": 5}, clock=clock)
        # No caps or quiet hours: this test is about crash safety, not policy.
        outbox = Outbox(store, clock, {"webhook": channel}, lease_ms=2000,
                        policy=DeliveryPolicy(caps=(), quiet_start="00:00", quiet_end="00:00"),
                        retry=RetryPolicy(max_attempts=5, initial_s=0.05))
        loops.append(DeliveryWorker(outbox, batch=500))
    for loop in loops:
        loop.start()
    print("started", flush=True)
    time.sleep(float(seconds))
    for loop in reversed(loops):
        loop.stop()
    print(f"transitions {timers.transitions}", flush=True)
    store.close()


if __name__ == "__main__":
    main()
