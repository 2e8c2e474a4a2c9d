"""The collector's own Sensors decoder takes every demo record but the deliberate junk."""

from __future__ import annotations

from collections import Counter

import orjson

from conftest import END_MS
from touchline.demo import generate
from touchline.track.decode import CollectRequest
from touchline.track.sensors import decode_sensors
from touchline.track.sink import Project, StaticProjects

JUNK_FIELDS = {"distinct_id", "event", "properties.order-source", "properties.date"}


def test_decoder_accepts_the_demo() -> None:
    projects = StaticProjects([Project("default", "key")])
    sent = 0
    refused: Counter[str] = Counter()
    identity_types: Counter[str] = Counter()
    links = 0
    for batch in generate(8, customers=800, days=45, end_ms=END_MS, batch_size=2000):
        # BatchConsumer-style body: the JSON array as the server SDKs may post it.
        req = CollectRequest("POST", "/sa", {"project": "default"}, {}, orjson.dumps(batch))
        decoded = decode_sensors(req, projects, END_MS)
        sent += len(batch)
        refused.update(e.field for e in decoded.errors)
        for rec in decoded.records:
            identity_types.update(list(rec.identities))
            links += rec.kind == "link" or rec.event == "$SignUp"
    assert sent > 20_000
    assert set(refused) <= JUNK_FIELDS
    assert 0 < sum(refused.values()) < 0.001 * sent
    assert {"login_id", "anonymous_id", "cookie_id", "mobile", "openid", "unionid"} <= set(
        identity_types)
    assert links > 300
