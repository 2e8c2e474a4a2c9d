"""What moves between the ingest pipeline and the two stores.

The state store (identities, profiles, items: the transactional truth) answers a
batch of records with a :class:`StateOutcome`. The ingest pipeline turns records and
outcome into an :class:`IngestBatch`, which the event store commits in one
transaction together with its analytical replica of profiles, identities, items and
the user map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..errors import InvalidInput

__all__ = [
    "EVENT_SCHEMA",
    "IdentityRow",
    "IngestBatch",
    "ItemRow",
    "ProfileRow",
    "StateOutcome",
]

# Columns of the stored events. `profile_id` is the profile the event resolved to
# when it was ingested; the stitched `user_id` is derived at query time through the
# user map, so a later merge (or an unbind that splits a profile again) re-attributes
# past events without rewriting them.
EVENT_SCHEMA = pa.schema([
    ("project", pa.string()),
    ("event_id", pa.string()),
    ("event", pa.string()),
    ("profile_id", pa.int64()),
    ("distinct_id", pa.string()),
    ("time", pa.timestamp("ms")),
    ("received_at", pa.timestamp("ms")),
    ("source", pa.string()),
    ("properties", pa.string()),  # JSON text
])


@dataclass(slots=True)
class ProfileRow:
    project: str
    user_id: int
    properties: dict[str, Any]
    first_seen_ms: int | None
    last_seen_ms: int | None
    event_count: int
    deleted: bool = False


@dataclass(slots=True)
class IdentityRow:
    project: str
    id_type: str
    id_value: str
    user_id: int | None  # None: the identity was removed (unbind)


@dataclass(slots=True)
class ItemRow:
    project: str
    item_type: str
    item_id: str
    properties: dict[str, Any] | None  # None: the item was deleted
    updated_ms: int


@dataclass(slots=True)
class StateOutcome:
    """The state store's answer to one batch of records.

    ``profile_ids[i]`` is the profile record ``i`` resolved to (None when the record
    was refused, with the reason in ``errors``, or when it is an item record).
    ``user_map`` gives, for every profile whose survivor changed or that is merged
    into a touched profile, its current survivor (a profile mapped to itself is no
    longer merged). ``profiles``/``identities``/``items`` are the current rows of
    everything the batch touched.
    """

    profile_ids: list[int | None]
    errors: list[tuple[int, InvalidInput]] = field(default_factory=list)
    user_map: dict[tuple[str, int], int] = field(default_factory=dict)
    profiles: list[ProfileRow] = field(default_factory=list)
    identities: list[IdentityRow] = field(default_factory=list)
    items: list[ItemRow] = field(default_factory=list)


@dataclass(slots=True)
class IngestBatch:
    """One atomic commit to the event store, ending at log offset ``offset``."""

    events: pa.Table
    offset: int
    profiles: list[ProfileRow] = field(default_factory=list)
    identities: list[IdentityRow] = field(default_factory=list)
    items: list[ItemRow] = field(default_factory=list)
    user_map: dict[tuple[str, int], int] = field(default_factory=dict)
