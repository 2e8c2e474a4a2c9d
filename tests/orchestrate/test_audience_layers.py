"""RFM-layer and lifecycle-status conditions answered by the real analysis engine."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from touchline.clock import VirtualClock
from touchline.config import load_settings
from touchline.errors import InvalidInput
from touchline.orchestrate.audience_hooks import engine_for, forget
from touchline.orchestrate.segments import get_segment, member_ids
from touchline.runtime import open_runtime
from touchline.store.batch import EVENT_SCHEMA, IngestBatch, ProfileRow

DAY = 86_400_000
T0 = 1_790_812_800_000  # 2026-10-01T00:00:00Z
RFM = {"from": "2026-10-01", "to": "2026-10-31", "event": {"event": "pay"},
       "monetary": "amount", "scoring": "thresholds",
       "thresholds": {"r": [3, 7, 14, 21], "f": [1, 2, 3, 5], "m": [50, 100, 200, 400]},
       "layers": [{"name": "top", "f": [4, 5]}]}


def test_rfm_layer_and_lifecycle_conditions(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "data", env={}, admin_token="t")
    rt = open_runtime(settings, clock=VirtualClock(T0 + 31 * DAY), ingest=False)
    try:
        rows = []
        # User u pays u times, the last time on day 20 + u.
        for u in range(1, 7):
            for k in range(u):
                rows.append({"project": "default", "event_id": f"{u}-{k}", "event": "pay",
                             "profile_id": u, "distinct_id": str(u),
                             "time": T0 + (20 + u - k) * DAY, "received_at": T0,
                             "source": "t", "properties": '{"amount": 60}'})
        table = pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)
        profiles = [ProfileRow("default", u, {}, None, None, 0) for u in range(1, 8)]
        rt.events.commit_batch(IngestBatch(table, 1, profiles=profiles))
        engine = engine_for(rt)
        engine.save("default", {"name": "top", "conditions": {"rfm_layer": "top", "spec": RFM}})
        engine.save("default", {"name": "fresh", "conditions": {"lifecycle_stage": "new", "spec": {
            "from": "2026-10-01", "to": "2026-10-31", "period": "month",
            "event": {"event": "pay"}}}})
        with rt.state.transaction() as tx:
            # The frequency score is 1 + the thresholds reached: 4 or 5 is 3+ payments.
            assert member_ids(tx, "default", "top") == {3, 4, 5, 6}
            assert member_ids(tx, "default", "fresh") == {1, 2, 3, 4, 5, 6}
            assert get_segment(tx, "default", "top").member_count == 4
        try:
            engine.save("default", {"name": "x", "conditions": {"rfm_layer": "nope", "spec": RFM}})
        except InvalidInput as exc:
            assert exc.field == "rfm_layer" and "top" in exc.rule
        else:
            raise AssertionError("an unknown layer was accepted")
    finally:
        forget(rt)
        rt.close()
