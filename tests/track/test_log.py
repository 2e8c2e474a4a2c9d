from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from touchline.track.dedupe import DuplicateFilter
from touchline.track.log import IngestLog


def test_append_then_read_back(tmp_path: Path) -> None:
    log = IngestLog(tmp_path, fsync=False)
    ends = [log.append_sync(f"entry {i}".encode()) for i in range(100)]
    assert ends == sorted(ends)
    got = list(log.read(0))
    assert [p for _, p in got] == [f"entry {i}".encode() for i in range(100)]
    assert [e for e, _ in got] == ends
    # Reading from the middle starts at that entry.
    assert next(p for _, p in log.read(ends[49])) == b"entry 50"
    log.close()


def test_reopen_keeps_everything_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    log = IngestLog(tmp_path)
    for i in range(10):
        log.append_sync(b"x" * i)
    end = log.end_offset
    log.close()
    seg = sorted(tmp_path.glob("*.log"))[-1]
    with open(seg, "ab") as f:  # a crash in the middle of a write
        f.write(b"\x10\x00\x00\x00\x00\x00")
    log = IngestLog(tmp_path)
    assert log.end_offset == end
    assert len(list(log.read(0))) == 10
    assert log.append_sync(b"after") == end + 8 + 5
    assert [p for _, p in log.read(end)] == [b"after"]
    log.close()


def test_corrupt_crc_in_tail_is_cut(tmp_path: Path) -> None:
    log = IngestLog(tmp_path)
    log.append_sync(b"good")
    good_end = log.end_offset
    log.append_sync(b"bad!")
    log.close()
    seg = sorted(tmp_path.glob("*.log"))[-1]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    log = IngestLog(tmp_path)
    assert log.end_offset == good_end
    assert [p for _, p in log.read(0)] == [b"good"]
    log.close()


def test_segments_roll_and_release(tmp_path: Path) -> None:
    log = IngestLog(tmp_path, fsync=False, segment_bytes=1000)
    ends = [log.append_sync(os.urandom(100)) for _ in range(50)]
    assert len(list(tmp_path.glob("*.log"))) > 3
    assert len(list(log.read(0))) == 50
    log.release(ends[30])
    remaining = list(log.read(min(int(p.stem) for p in tmp_path.glob("*.log"))))
    assert remaining[-1][0] == ends[-1]
    assert all(e > ends[20] for e, _ in remaining)
    log.close()
    reopened = IngestLog(tmp_path, fsync=False, segment_bytes=1000)
    assert reopened.end_offset == ends[-1]
    reopened.close()


def test_concurrent_appends_share_fsyncs_and_all_land(tmp_path: Path) -> None:
    log = IngestLog(tmp_path)

    async def main() -> list[int]:
        return await asyncio.gather(*(log.append(f"{i}".encode()) for i in range(500)))

    # A thread of its own: another test may have left an event loop set on this one.
    with ThreadPoolExecutor(1) as pool:
        ends = pool.submit(asyncio.run, main()).result()
    assert len(set(ends)) == 500
    assert sorted(int(p) for _, p in log.read(0)) == list(range(500))
    log.close()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=30), st.integers(0, 2000))
def test_any_truncation_recovers_a_prefix(tmp_path_factory, payloads, cut) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("log")
    log = IngestLog(d, fsync=False)
    for p in payloads:
        log.append_sync(p)
    log.close()
    seg = sorted(d.glob("*.log"))[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[: max(0, len(data) - cut)])
    log = IngestLog(d, fsync=False)
    got = [p for _, p in log.read(0)]
    assert got == payloads[: len(got)]
    log.close()


def test_duplicate_filter_across_generations() -> None:
    f = DuplicateFilter(horizon_ms=1000, seal_at=10)
    first = f.filter(list(range(25)), [0] * 25)
    assert all(first)
    again = f.filter([3, 24, 100, 100], [5, 5, 5, 5])
    assert again == [False, False, True, False]
    f.expire(now_ms=10_000)  # sealed generations older than the horizon go
    assert f.filter([3], [10_000]) == [True]


def test_duplicate_filter_merges_small_generations() -> None:
    f = DuplicateFilter(horizon_ms=1000, seal_at=10, merge_below=30)
    for start in range(0, 100, 10):
        assert all(f.filter(list(range(start, start + 10)), [start] * 10))
    sizes = [len(a) for a, _ in f._sealed]
    assert sizes == [30, 30, 30, 10]  # merged up to merge_below, then a new one
    assert all(len(a) == len(set(a.tolist())) and (a[:-1] < a[1:]).all() for a, _ in f._sealed)
    assert f.filter([0, 45, 99, 100], [200] * 4) == [False, False, False, True]
    assert len(f) == 101
    f.expire(now_ms=1075)  # generations whose newest id is older than 75 go
    assert f.filter([0, 45, 85, 95], [1075] * 4) == [True, True, False, False]


def test_reads_a_window_at_a_time_across_segments_and_large_entries(tmp_path: Path) -> None:
    # Entries smaller and larger than the read window, over several segments: every
    # entry comes back once, in order, with its end offset, from any starting entry.
    log = IngestLog(tmp_path, fsync=False, segment_bytes=700)
    payloads = [bytes([i % 251]) * (i * 37 % 450 + 1) for i in range(60)]
    ends = [log.append_sync(p) for p in payloads]
    assert len(list(tmp_path.glob("*.log"))) > 3
    for window in (64, 100, 1 << 20):
        got = list(log.read(0, window=window))
        assert [p for _, p in got] == payloads
        assert [e for e, _ in got] == ends
        assert [p for _, p in log.read(ends[29], window=window)] == payloads[30:]
    # max_bytes still stops the reader early.
    assert len(list(log.read(0, window=64, max_bytes=1000))) < len(payloads)
    log.close()
