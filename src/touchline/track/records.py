"""The normalized record: what every collection protocol decodes into.

Adapters (Sensors, Segment, PostHog, native, file import) turn their wire format
into :class:`Record` objects and say, per record, which identities it carries and
whether it is an explicit link between them. Everything after the adapter (the
durable log, identity stitching, profiles, the event store) sees only records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = [
    "ID_PRIORITY",
    "JUNK_IDS",
    "NAME_RE",
    "RESERVED_PROPERTIES",
    "Record",
    "RecordKind",
    "is_junk_id",
]

RecordKind = Literal["track", "profile", "item", "link", "unlink"]

# Profile operations (Sensors' six) and item operations.
PROFILE_OPS = ("set", "set_once", "increment", "append", "unset", "delete")
ITEM_OPS = ("set", "delete")

# Typed identities, most trusted first. An event resolves to the profile of its
# most trusted identity; `login_id` is the one two profiles may never disagree on.
ID_PRIORITY: tuple[str, ...] = (
    "login_id", "mobile", "email", "unionid", "openid",
    "device_id", "cookie_id", "anonymous_id",
)

NAME_RE = re.compile(r"^[a-zA-Z_$][a-zA-Z0-9_$]{0,99}$")

RESERVED_PROPERTIES = frozenset({
    "distinct_id", "original_id", "time", "properties", "id", "first_id", "second_id",
    "users", "events", "event", "event_id", "device_id", "user_id", "date", "datetime",
})

# Values that clients send when they have no real id. They must never reach the
# identity graph, or every such user collapses into one profile.
JUNK_IDS = frozenset({
    "", "anonymous", "guest", "null", "none", "undefined", "0", "-1", "nan", "true",
    "false", "[object object]", "nil", "unknown", "(null)", "<null>",
})


def is_junk_id(value: str, extra: frozenset[str] = frozenset()) -> bool:
    v = value.strip().strip("\"'").strip().lower()
    return v in JUNK_IDS or v in extra


@dataclass(slots=True)
class Record:
    """One validated input record.

    ``identities`` maps identity type to value, most specific first; the first one
    is the record's primary identity. When ``link`` is true the record is an
    explicit link event and all its identities belong to one person.
    ``event_id`` is the de-duplication key: exact resends carry the same one.
    """

    kind: RecordKind
    project: str
    event_id: str
    time_ms: int
    received_ms: int
    source: str
    event: str | None = None
    distinct_id: str | None = None
    identities: dict[str, str] = field(default_factory=dict)
    link: bool = False
    properties: dict[str, Any] = field(default_factory=dict)
    op: str | None = None
    item_type: str | None = None
    item_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.kind, "p": self.project, "id": self.event_id, "t": self.time_ms,
            "r": self.received_ms, "s": self.source, "e": self.event, "d": self.distinct_id,
            "i": self.identities, "l": self.link, "pr": self.properties, "o": self.op,
            "it": self.item_type, "ii": self.item_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return cls(
            kind=d["k"], project=d["p"], event_id=d["id"], time_ms=d["t"],
            received_ms=d["r"], source=d["s"], event=d["e"], distinct_id=d["d"],
            identities=d["i"], link=d["l"], properties=d["pr"], op=d["o"],
            item_type=d["it"], item_id=d["ii"],
        )

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_dict())
