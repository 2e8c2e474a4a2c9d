"""A pinch of what real collectors receive: bad records and client resends.

Added on top of the good records (never instead of them), so the analyses see the
same customers whether or not the collector refuses the junk. Both kinds stay far
under 0.1% of the records.

- junk: a JS page whose id is the string ``undefined``; property names with a dash
  or a reserved name (``date``); an event name with a dash; a 300-character id;
- resends: the JS SDK's batch_send retries a batch until a 2xx, so exact copies
  arrive with only ``_flush_time`` changed (the collector's dedupe must drop them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .draw import Draw

__all__ = ["JUNK_KINDS", "JUNK_RATE", "RESEND_RATE", "add_junk"]

JUNK_RATE = 0.0003
RESEND_RATE = 0.0002

Rec = dict[str, Any]


def _copy(rec: Rec) -> Rec:
    out = dict(rec)
    out["properties"] = dict(rec["properties"])
    if "identities" in rec:
        out["identities"] = dict(rec["identities"])
    return out


def _undefined_id(rec: Rec) -> Rec:
    for key in ("login_id", "identities"):
        rec.pop(key, None)
    rec["properties"].pop("$is_login_id", None)
    rec["distinct_id"] = "undefined"
    if "anonymous_id" in rec:
        rec["anonymous_id"] = "undefined"
        rec["identities"] = {"$identity_cookie_id": "undefined"}
    return rec


def _dash_property(rec: Rec) -> Rec:
    rec["properties"]["order-source"] = "h5"
    return rec


def _reserved_property(rec: Rec) -> Rec:
    rec["properties"]["date"] = "2024-01-01"
    return rec


def _dash_event(rec: Rec) -> Rec:
    rec["event"] = rec["event"].replace("_", "-")
    if "-" not in rec["event"]:
        rec["event"] = "page-view"
    return rec


def _long_id(rec: Rec) -> Rec:
    rec["distinct_id"] = "x" * 300
    rec.pop("login_id", None)
    rec["properties"].pop("$is_login_id", None)
    return rec


JUNK_KINDS: tuple[Callable[[Rec], Rec], ...] = (
    _undefined_id, _dash_property, _reserved_property, _dash_event, _long_id)


def add_junk(records: list[Rec], draw: Draw) -> None:
    """Append corrupted copies and resends of a few of ``records`` (one day's output)."""
    n = len(records)
    rng = draw.rng
    for i in rng.choice(n, size=int(rng.binomial(n, JUNK_RATE)), replace=False).tolist():
        rec = records[i]
        if rec["type"] == "track":
            records.append(draw.pick(JUNK_KINDS)(_copy(rec)))
    for i in rng.choice(n, size=int(rng.binomial(n, RESEND_RATE)), replace=False).tolist():
        rec = records[i]
        if "_flush_time" in rec:
            again = _copy(rec)
            again["_flush_time"] = rec["_flush_time"] + draw.between(6_000, 60_000)
            records.append(again)
