"""The import's key sets against plain Python sets and dicts, and its line blocks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchline.track.bulk_keys import IdOwners, KeySet, event_keys

batches = st.lists(st.lists(st.integers(0, 300), max_size=60), max_size=25)


@given(batches)
@settings(max_examples=200, deadline=None)
def test_keyset_fresh_matches_a_set(chunks: list[list[int]]) -> None:
    keys = KeySet()
    seen: set[int] = set()
    for chunk in chunks:
        got = keys.fresh(np.array(chunk, dtype=np.uint64)).tolist()
        want = []
        for k in chunk:
            want.append(k not in seen)
            seen.add(k)
        assert got == want
        assert len(keys) == len(seen)


def test_keyset_add_then_fresh() -> None:
    keys = KeySet()
    keys.add(np.array([5, 5, 1], dtype=np.uint64))
    keys.add(np.array([1, 2], dtype=np.uint64))
    assert len(keys) == 3
    assert keys.fresh(np.array([2, 3, 5, 3], dtype=np.uint64)).tolist() == [False, True,
                                                                          False, False]


def test_event_keys_of_hex_and_other_ids() -> None:
    hexes = pa.array(["0123456789abcdef" * 2, "f" * 32])
    assert event_keys(hexes).tolist() == [0x0123456789ABCDEF, 2**64 - 1]
    others = event_keys(pa.array(["msg-1", "msg-2", "msg-1"]))
    assert others[0] == others[2] != others[1]


@given(st.lists(st.lists(st.sampled_from("abcdefgh"), max_size=6), max_size=8))
@settings(max_examples=100, deadline=None)
def test_id_owners_matches_a_dict(chunks: list[list[str]]) -> None:
    owners = IdOwners()
    want: dict[str, int] = {}
    for n, chunk in enumerate(chunks):
        values = pa.array(list(dict.fromkeys(chunk)), pa.string())
        got = owners.lookup("login_id", values).tolist()
        assert got == [want.get(v, -1) for v in values.to_pylist()]
        new = [i for i, o in enumerate(got) if o < 0]
        ids = np.array([100 * n + i for i in new], dtype=np.int64)
        owners.add("login_id", values.take(pa.array(new, pa.int64())), ids)
        want.update(zip((values[i].as_py() for i in new), ids.tolist(), strict=True))
    assert owners.lookup("anonymous_id", pa.array(["a"])).tolist() == [-1]
    owners.clear()
    assert owners.lookup("login_id", pa.array(["a"])).tolist() == [-1]


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
       st.booleans(), st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_blocks_cut_whole_lines(tmp_path_factory: pytest.TempPathFactory, lines: list[bytes],
                                trailing: bool, chunk: int) -> None:
    # Blocks hold whole lines, numbered from 1, whatever the chunk size (lines
    # longer than a chunk included), and read every byte exactly once.
    from touchline.track.importer import _blocks

    content = b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    path = tmp_path_factory.mktemp("blocks") / "f.ndjson"
    path.write_bytes(content)
    got: list[bytes] = []
    for block in _blocks(path, chunk):
        parts = bytes(block.data).split(b"\n")
        assert block.first == len(got) + 1 and block.count == len(parts)
        got.extend(parts)
        assert block.done <= len(content)
    want = content.split(b"\n")
    if content.endswith(b"\n"):
        want.pop()
    assert got == (want if content else [])
