"""The identity cache is bounded by the identity_cache_entries setting, and stitching
stays right for the identities that do not fit (they are read from the state store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from touchline.config import load_settings
from touchline.errors import ConfigError
from touchline.runtime import open_runtime
from touchline.track.identity import CACHE_KEY
from touchline.track.records import Record

T0 = 1_790_812_800_000


def _track(i: int, login: str) -> Record:
    return Record(kind="track", project="default", event_id=f"ev{i}", time_ms=T0 + i,
                  received_ms=T0 + i, source="native", event="view_menu",
                  distinct_id=login, identities={"login_id": login}, properties={})


def test_cache_holds_at_most_the_setting_and_events_still_stitch(tmp_path: Path) -> None:
    rt = open_runtime(load_settings(tmp_path, env={}, identity_cache_entries=50))
    try:
        # Two rounds over 300 people: the second finds most of them outside the cache.
        for rnd in range(2):
            rt.sink.submit_sync([_track(rnd * 1000 + i, f"m{i}") for i in range(300)])
            rt.pipeline.drain(timeout=60)
        assert len(rt.state.caches[CACHE_KEY]) <= 50
        result = rt.events.query(
            "default", "SELECT count(*), count(DISTINCT user_id), max(n) FROM"
            " (SELECT user_id, count(*) AS n FROM events GROUP BY user_id)",
            timeout_s=30, max_rows=1)
        # 300 profiles, each with its two events: no person split by a cache miss.
        assert result.rows == [[300, 300, 2]]
    finally:
        rt.close()


def test_a_negative_cache_size_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identity_cache_entries"):
        open_runtime(load_settings(tmp_path, env={}, identity_cache_entries=-1))
