"""Replica rows (profiles, identities, items, user map) staged as Arrow tables.

Each staged table carries the row's key, its columns, and ``keep``: False when the
row is a delete (a deleted profile, an unbound identity, a deleted item, a profile
mapped back to itself). A backend deletes every staged key, then inserts the rows
it keeps, so a batch that touches a key twice ends with the last version.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import TypeVar

import orjson
import pyarrow as pa

from ..batch import IdentityRow, ItemRow, ProfileRow

__all__ = [
    "IDENTITY_SCHEMA",
    "ITEM_SCHEMA",
    "PROFILE_SCHEMA",
    "USER_MAP_SCHEMA",
    "chunked",
    "identities_table",
    "items_table",
    "profiles_table",
    "user_map_table",
]

T = TypeVar("T")
_MS = pa.timestamp("ms")

PROFILE_SCHEMA = pa.schema([
    ("project", pa.string()), ("user_id", pa.int64()), ("properties", pa.string()),
    ("first_seen", _MS), ("last_seen", _MS), ("event_count", pa.int64()), ("keep", pa.bool_()),
])
IDENTITY_SCHEMA = pa.schema([
    ("project", pa.string()), ("id_type", pa.string()), ("id_value", pa.string()),
    ("user_id", pa.int64()), ("keep", pa.bool_()),
])
ITEM_SCHEMA = pa.schema([
    ("project", pa.string()), ("item_type", pa.string()), ("item_id", pa.string()),
    ("properties", pa.string()), ("updated_at", _MS), ("keep", pa.bool_()),
])
USER_MAP_SCHEMA = pa.schema([
    ("project", pa.string()), ("profile_id", pa.int64()), ("user_id", pa.int64()),
    ("keep", pa.bool_()),
])


def chunked(rows: Iterable[T], size: int = 100_000) -> Iterator[list[T]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def profiles_table(rows: Sequence[ProfileRow]) -> pa.Table:
    last = {(r.project, r.user_id): r for r in rows}
    vals = list(last.values())
    return pa.Table.from_pydict({
        "project": [r.project for r in vals],
        "user_id": [r.user_id for r in vals],
        "properties": [_json(r.properties) for r in vals],
        "first_seen": [r.first_seen_ms for r in vals],
        "last_seen": [r.last_seen_ms for r in vals],
        "event_count": [r.event_count for r in vals],
        "keep": [not r.deleted for r in vals],
    }, schema=PROFILE_SCHEMA)


def identities_table(rows: Sequence[IdentityRow]) -> pa.Table:
    last = {(r.project, r.id_type, r.id_value): r for r in rows}
    vals = list(last.values())
    return pa.Table.from_pydict({
        "project": [r.project for r in vals],
        "id_type": [r.id_type for r in vals],
        "id_value": [r.id_value for r in vals],
        "user_id": [r.user_id if r.user_id is not None else 0 for r in vals],
        "keep": [r.user_id is not None for r in vals],
    }, schema=IDENTITY_SCHEMA)


def items_table(rows: Sequence[ItemRow]) -> pa.Table:
    last = {(r.project, r.item_type, r.item_id): r for r in rows}
    vals = list(last.values())
    return pa.Table.from_pydict({
        "project": [r.project for r in vals],
        "item_type": [r.item_type for r in vals],
        "item_id": [r.item_id for r in vals],
        "properties": [None if r.properties is None else _json(r.properties) for r in vals],
        "updated_at": [r.updated_ms for r in vals],
        "keep": [r.properties is not None for r in vals],
    }, schema=ITEM_SCHEMA)


def user_map_table(mapping: Mapping[tuple[str, int], int]) -> pa.Table:
    keys = list(mapping)
    return pa.Table.from_pydict({
        "project": [p for p, _ in keys],
        "profile_id": [pid for _, pid in keys],
        "user_id": [mapping[k] for k in keys],
        "keep": [mapping[k] != k[1] for k in keys],
    }, schema=USER_MAP_SCHEMA)
