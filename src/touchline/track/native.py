"""Touchline's own collection protocol: typed identities, no guessing.

``POST /api/v1/events?project=P`` with the project's write key (query
``write_key`` or ``Authorization: Basic base64("<key>:")``). The body is a JSON
array of records, a single record, or NDJSON (one record per line; a line that is
not valid JSON refuses only that record). Gzip is detected by magic bytes.

A record::

    {"type": "track",                  # track | profile | item | link | unlink
     "event": "order_paid",            # track (and optionally link/unlink)
     "event_id": "o-1001",             # dedupe key; default: a hash of the record
     "time": "2026-05-01T12:00:00Z",   # ISO 8601 or ms since the epoch; default: now
     "identities": {"login_id": "u1", "mobile": "13800000000"},
     "link": false,                    # true: the identities belong to one person
     "op": "set",                      # profile: set|set_once|increment|append|unset|delete
                                       # item: set|delete
     "item_type": "dish", "item_id": "d-7",
     "properties": {"amount": 42.5}}

Names and properties follow the strict (Sensors) rules, so that events from every
protocol can be queried alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import AuthError, InvalidInput, PayloadError
from .decode import (
    CollectRequest,
    Decoded,
    basic_auth_user,
    content_hash,
    gunzip_if_magic,
    is_dry_run,
    loads_json,
)
from .records import ITEM_OPS, PROFILE_OPS, Record, RecordKind
from .sink import Project, ProjectDirectory
from .validate import (
    STRICT_RULES,
    check_id,
    check_id_type,
    check_name,
    check_profile_properties,
    check_properties,
    order_identities,
    parse_time,
)

__all__ = ["NATIVE_KINDS", "decode_native", "native_payload", "native_record"]

SOURCE = "native"
NATIVE_KINDS: tuple[RecordKind, ...] = ("track", "profile", "item", "link", "unlink")
MAX_RECORDS = 10_000


@dataclass(frozen=True, slots=True)
class _Context:
    project: Project
    now_ms: int
    extra_junk: frozenset[str]


def native_payload(body: bytes) -> list[tuple[Any, InvalidInput | None]]:
    """The records of a body, each with the error that kept it from parsing (NDJSON)."""
    raw = gunzip_if_magic(body, "body").strip()
    if raw.startswith(b"["):
        value = loads_json(raw, "body")
        return [(v, None) for v in value]
    if not raw.startswith(b"{"):
        raise PayloadError("body", "must be a JSON array, a JSON object or NDJSON")
    try:
        return [(loads_json(raw, "body"), None)]
    except PayloadError:
        if b"\n" not in raw:
            raise
    out: list[tuple[Any, InvalidInput | None]] = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append((loads_json(line, "record"), None))
        except PayloadError as exc:
            out.append((None, exc))
    return out


def _project(req: CollectRequest, projects: ProjectDirectory) -> Project:
    key = req.query.get("write_key") or basic_auth_user(req.header("authorization"))
    if not key:
        raise AuthError("missing write key: send write_key=... or Basic auth")
    name = req.query.get("project")
    project = projects.by_name(name) if name else projects.by_write_key(key)
    if project is None or project.write_key != key:
        raise AuthError("invalid write key for this project")
    return project


def decode_native(
    req: CollectRequest,
    projects: ProjectDirectory,
    now_ms: int,
    *,
    extra_junk: frozenset[str] = frozenset(),
) -> Decoded:
    """Decode a native request. Raises AuthError (401) or PayloadError (400)."""
    project = _project(req, projects)
    items = native_payload(req.body)
    if len(items) > MAX_RECORDS:
        raise PayloadError("body", f"more than {MAX_RECORDS} records in one request")
    out = Decoded(dry_run=is_dry_run(req), project=project.name)
    ctx = _Context(project, now_ms, extra_junk)
    for index, (raw, error) in enumerate(items):
        try:
            if error is not None:
                raise error
            out.records.append(native_record(raw, ctx))
        except InvalidInput as exc:
            out.refuse(index, exc)
    return out


def _identities(value: Any, extra_junk: frozenset[str]) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise InvalidInput("identities", "must be a non-empty object of type -> id")
    ids: dict[str, str] = {}
    for id_type, id_value in value.items():
        field = f"identities.{id_type}"
        ids[check_id_type(id_type, field)] = check_id(id_value, field, extra_junk)
    return order_identities(ids)


def _op(raw: Mapping[str, Any], allowed: tuple[str, ...]) -> str:
    op = raw.get("op", "set")
    if op not in allowed:
        raise InvalidInput("op", f"must be one of {', '.join(allowed)}")
    return str(op)


def native_record(raw: Any, ctx: _Context) -> Record:
    """One native record as a Record; raises InvalidInput naming the field."""
    if not isinstance(raw, dict):
        raise InvalidInput("record", "must be a JSON object")
    kind = raw.get("type", "track")
    if kind not in NATIVE_KINDS:
        raise InvalidInput("type", f"must be one of {', '.join(NATIVE_KINDS)}")
    time_raw = raw.get("time")
    time_ms = ctx.now_ms if time_raw is None else parse_time(time_raw, "time")
    event_id = raw.get("event_id")
    if event_id is None:
        event_id = content_hash(raw)
    elif not isinstance(event_id, str) or not event_id or len(event_id) > 255:
        raise InvalidInput("event_id", "must be a string of 1 to 255 characters")
    link = raw.get("link", False)
    if not isinstance(link, bool):
        raise InvalidInput("link", "must be true or false")
    base: dict[str, Any] = {
        "project": ctx.project.name, "event_id": event_id, "time_ms": time_ms,
        "received_ms": ctx.now_ms, "source": SOURCE,
    }

    if kind == "item":
        op = _op(raw, ITEM_OPS)
        item_id = raw.get("item_id")
        if not isinstance(item_id, str) or not item_id or len(item_id) > 255:
            raise InvalidInput("item_id", "must be a string of 1 to 255 characters")
        props = {} if op == "delete" else check_properties(
            raw.get("properties"), "properties", STRICT_RULES)
        return Record(kind="item", op=op, item_type=check_name(raw.get("item_type"), "item_type"),
                      item_id=item_id, properties=props, **base)

    identities = _identities(raw.get("identities"), ctx.extra_junk)
    distinct = next(iter(identities.values()))
    if kind == "profile":
        op = _op(raw, PROFILE_OPS)
        props = check_profile_properties(op, raw.get("properties"), "properties", STRICT_RULES)
        return Record(kind="profile", op=op, distinct_id=distinct, identities=identities,
                      properties=props, **base)
    if kind == "link" and len(identities) < 2:
        raise InvalidInput("identities", "a link needs at least two identities")
    event = raw.get("event")
    if kind == "track" or event is not None:
        event = check_name(event, "event")
    return Record(kind=kind, event=event, distinct_id=distinct, identities=identities,
                  link=link or kind == "link",
                  properties=check_properties(raw.get("properties"), "properties", STRICT_RULES),
                  **base)
