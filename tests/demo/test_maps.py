"""The demo's journey maps keep to the map schema and name only events the demo sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import END_MS
from touchline.analyze.spec import parse_duration
from touchline.demo import generate, map_paths
from touchline.demo.catalog import CHANNELS

STAGE_KEYS = {"name", "events", "touchpoints", "kpi", "where"}


@pytest.fixture(scope="module")
def sent() -> dict[str, set[Any]]:
    """Event names, and the values of each event property, over a small run."""
    out: dict[str, set[Any]] = {"": set()}
    for batch in generate(11, customers=600, days=40, end_ms=END_MS):
        for r in batch:
            if r["type"] == "track":
                out[""].add(r["event"])
                for k, v in r["properties"].items():
                    out.setdefault(k, set()).add(v)
    return out


def test_both_maps_ship() -> None:
    assert [p.name for p in map_paths()] == ["paid_membership.yaml", "restaurant.yaml"]


@pytest.mark.parametrize("path", map_paths(), ids=lambda p: p.stem)
def test_map_schema(path: Path, sent: dict[str, set[Any]]) -> None:
    spec = yaml.safe_load(path.read_text("utf-8"))
    assert set(spec) == {"name", "title", "window", "stages"}
    assert spec["name"] == path.stem
    assert parse_duration(spec["window"], "window") > 0
    names = [s["name"] for s in spec["stages"]]
    assert len(names) == len(set(names)) >= 4
    for stage in spec["stages"]:
        assert set(stage) <= STAGE_KEYS and {"name", "events", "kpi"} <= set(stage)
        assert set(stage["events"]) <= sent[""], stage["events"]
        assert set(stage["kpi"]) == {"name", "target"}
        assert stage["kpi"]["name"] in {"reach", "conversion"}
        assert 0.0 <= stage["kpi"]["target"] <= 1.0
        if "touchpoints" in stage:
            assert stage["touchpoints"]["property"] == "channel"
            assert set(stage["touchpoints"]["values"]) <= set(CHANNELS)
        for f in stage.get("where", []):
            assert set(f) == {"property", "op", "value"} and f["op"] == "="
            assert f["value"] in sent[f["property"]]


def test_restaurant_stages_follow_the_meal() -> None:
    spec = yaml.safe_load((map_paths()[1]).read_text("utf-8"))
    assert [s["name"] for s in spec["stages"]] == ["arrive", "order", "wait", "dine", "feedback"]
