"""The real-time dispatcher: batches merged while a subscriber works, bounded queue."""

from __future__ import annotations

import threading

import pyarrow as pa

from touchline.dispatch import EventDispatcher


def table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"event_id": [f"e{i}" for i in range(start, start + n)]})


def test_batches_queued_while_busy_arrive_together_and_in_order() -> None:
    seen: list[list[str]] = []
    gate, busy = threading.Event(), threading.Event()

    def deliver(t: pa.Table) -> None:
        busy.set()
        gate.wait(10)
        seen.append(t.column("event_id").to_pylist())

    d = EventDispatcher(deliver)
    d.start()
    d.submit(table(1))
    assert busy.wait(10)  # the thread now holds the first batch, waiting on the gate
    d.submit(table(2, 1))
    d.submit(table(2, 3))
    gate.set()
    d.stop()
    assert seen == [["e0"], ["e1", "e2", "e3", "e4"]]


def test_a_slow_subscriber_holds_submitters_back_instead_of_queueing_without_bound() -> None:
    gate = threading.Event()
    delivered: list[int] = []

    def deliver(t: pa.Table) -> None:
        gate.wait(10)
        delivered.append(t.num_rows)

    d = EventDispatcher(deliver, max_pending_rows=10)
    d.start()
    d.submit(table(6))  # taken by the thread, still counted until delivered
    d.submit(table(6))  # 12 >= 10 pending from here on
    third = threading.Thread(target=d.submit, args=(table(6),))
    third.start()
    third.join(0.3)
    assert third.is_alive(), "the submitter should wait while the queue is full"
    gate.set()
    third.join(5)
    assert not third.is_alive()
    d.stop()
    assert sum(delivered) == 18


def test_profile_changes_are_merged_per_project() -> None:
    got: list[dict[str, set[int]]] = []
    gate, busy = threading.Event(), threading.Event()

    def deliver(t: pa.Table) -> None:
        busy.set()
        gate.wait(10)

    d = EventDispatcher(deliver, got.append)
    d.start()
    d.submit(table(1))
    assert busy.wait(10)
    d.submit_profiles({"default": {1, 2}})
    d.submit_profiles({"default": {2, 3}, "shop": {9}})
    gate.set()
    d.stop()
    assert got == [{"default": {1, 2, 3}, "shop": {9}}]
