"""The PostHog capture API (posthog-js, posthog-python and the other SDKs).

Paths ``/e``, ``/i/v0/e``, ``/capture``, ``/track``, ``/engage``, ``/batch`` (with or
without a trailing slash), over GET or POST. The payload is the ``data`` query
parameter, the ``data`` field of a form body, or the raw body; base64 is detected
(a payload that is not JSON), gzip by its magic bytes whatever the
``compression``/``Content-Encoding`` hints say. ``compression=lz64`` is refused
with a clear 400: no maintained Python package decodes lz-string, and current
posthog-js sends gzip instead.

The shapes accepted: a single event, a list of events, or ``{"batch": [...],
"api_key": ..., "sent_at": ...}`` (what posthog-python sends). The project key is
``api_key``/``token`` in the body, the query or the first event (posthog-js puts
``token`` in the properties), or an ``Authorization`` header.

Identities: PostHog's distinct ids are untyped. ``$identify`` links
``$anon_distinct_id`` (anonymous_id) to the distinct id (login_id);
``$create_alias`` links the event's distinct id (anonymous_id) to ``alias``
(login_id). Other events are typed by what posthog-js says of them: anonymous
when ``$is_identified`` is false or the distinct id is the ``$device_id``, a
login id otherwise (the server SDKs send identified users).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import AuthError, InvalidInput, PayloadError
from .decode import (
    CollectRequest,
    Decoded,
    b64decode,
    basic_auth_user,
    content_hash,
    gunzip_if_magic,
    is_dry_run,
    loads_json,
    parse_form,
)
from .records import Record, RecordKind
from .sink import Project, ProjectDirectory
from .validate import (
    LENIENT_RULES,
    check_event_name,
    check_id,
    check_properties,
    order_identities,
    parse_time,
    skew_corrected,
)

__all__ = ["POSTHOG_PATHS", "decode_posthog", "posthog_payload", "posthog_records"]

SOURCE = "posthog"
POSTHOG_PATHS = ("/e", "/i/v0/e", "/capture", "/track", "/engage", "/batch")

# Person-property operations an event may carry, and the profile op of each.
PROFILE_KEYS: Mapping[str, str] = {"$set": "set", "$set_once": "set_once", "$unset": "unset"}

# Events that only update the person (posthog-python's set() and set_once()): they
# become profile records and no event.
PROFILE_ONLY_EVENTS = frozenset({"$set", "$set_once"})


@dataclass(frozen=True, slots=True)
class _Context:
    project: Project
    now_ms: int
    sent_at: Any
    extra_junk: frozenset[str]


def posthog_payload(req: CollectRequest) -> tuple[Any, dict[str, str]]:
    """The decoded JSON payload of a capture request and its parameters."""
    params = dict(req.query)
    ctype = (req.header("content-type") or "").lower()
    field = "data"
    data: bytes
    if "data" in params:
        data = params["data"].encode("utf-8")
    elif req.body:
        body = req.body
        if "application/x-www-form-urlencoded" in ctype or body.startswith(b"data="):
            form = parse_form(body)
            if "data" not in form:
                raise PayloadError("data", "missing: the form body has no data field")
            data = form.pop("data").encode("utf-8")
            params.update(form)
        else:
            data, field = body, "body"
    else:
        raise PayloadError("body", "empty: send a JSON body or a data parameter")
    if params.get("compression", "").lower() == "lz64":
        raise PayloadError("compression", "lz64 is not supported: send gzip-js or base64")
    raw = gunzip_if_magic(data, field)
    if raw.lstrip()[:1] not in (b"{", b"["):
        raw = gunzip_if_magic(b64decode(raw, field), field)
    return loads_json(raw, field), params


def _first_event(payload: Any) -> Mapping[str, Any]:
    if isinstance(payload, dict):
        batch = payload.get("batch")
        if isinstance(batch, list) and batch and isinstance(batch[0], dict):
            return batch[0]
        return payload
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        return payload[0]
    return {}


def _api_key(req: CollectRequest, payload: Any, params: Mapping[str, str]) -> str | None:
    candidates: list[Any] = [params.get("api_key"), params.get("token")]
    if isinstance(payload, dict):
        candidates += [payload.get("api_key"), payload.get("token")]
    first = _first_event(payload)
    props = first.get("properties")
    candidates += [first.get("api_key"), first.get("token"), first.get("$token")]
    if isinstance(props, dict):
        candidates += [props.get("token"), props.get("$token")]
    auth = req.header("authorization") or ""
    if auth.lower().startswith("bearer "):
        candidates.append(auth[7:].strip())
    candidates.append(basic_auth_user(auth))
    return next((c for c in candidates if isinstance(c, str) and c), None)


def decode_posthog(
    req: CollectRequest,
    projects: ProjectDirectory,
    now_ms: int,
    *,
    extra_junk: frozenset[str] = frozenset(),
) -> Decoded:
    """Decode a PostHog capture request. Raises PayloadError (400) or AuthError (401)."""
    payload, params = posthog_payload(req)
    key = _api_key(req, payload, params)
    if key is None:
        raise AuthError("missing api_key: send api_key or token")
    project = projects.by_write_key(key)
    if project is None:
        raise AuthError("invalid api_key")
    sent_at: Any = params.get("_")
    sent_at = int(sent_at) if isinstance(sent_at, str) and sent_at.isdigit() else None
    if isinstance(payload, list):
        events: list[Any] = payload
    elif isinstance(payload, dict) and "batch" in payload:
        if not isinstance(payload["batch"], list):
            raise PayloadError("batch", "must be an array of events")
        events = payload["batch"]
        sent_at = payload.get("sent_at", sent_at)
    elif isinstance(payload, dict):
        events = [payload]
        sent_at = payload.get("sent_at", sent_at)
    else:
        raise PayloadError("data", "must be an event, an array of events or a batch")
    out = Decoded(dry_run=is_dry_run(req), project=project.name)
    ctx = _Context(project, now_ms, sent_at, extra_junk)
    for index, event in enumerate(events):
        try:
            out.records.extend(posthog_records(event, ctx))
        except InvalidInput as exc:
            out.refuse(index, exc)
    return out


def _time(ev: Mapping[str, Any], ctx: _Context) -> int:
    stamp = ev.get("timestamp")
    if stamp is None:
        offset = ev.get("offset")
        if isinstance(offset, int) and not isinstance(offset, bool) and 0 <= offset < 10**11:
            return ctx.now_ms - offset
        return ctx.now_ms
    time_ms = parse_time(stamp, "timestamp")
    if ctx.sent_at is None:
        return time_ms
    return skew_corrected(time_ms, parse_time(ctx.sent_at, "sent_at"), ctx.now_ms)


def _uuid(ev: Mapping[str, Any]) -> str:
    value = ev.get("uuid")
    if value is None:
        return content_hash(ev)
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidInput("uuid", "must be a string of 1 to 255 characters")
    return value


def posthog_records(ev: Any, ctx: _Context) -> list[Record]:
    """One PostHog event as records: the event itself (unless it is only a person
    update) and one profile record per ``$set``/``$set_once``/``$unset`` it carries."""
    if not isinstance(ev, dict):
        raise InvalidInput("record", "must be a JSON object")
    props = check_properties(ev.get("properties"), "properties", LENIENT_RULES)
    name = ev.get("event")
    if name is None and "$set" in ev:
        name = "$set"
    name = check_event_name(name, "event", LENIENT_RULES)
    distinct_raw = ev.get("distinct_id", ev.get("$distinct_id", props.get("distinct_id")))
    distinct = check_id(distinct_raw, "distinct_id", ctx.extra_junk)
    event_id = _uuid(ev)
    time_ms = _time(ev, ctx)

    kind: RecordKind = "track"
    link = False
    if name == "$identify":
        ids = {"login_id": distinct}
        anon = props.get("$anon_distinct_id")
        if anon is not None:
            ids["anonymous_id"] = check_id(anon, "properties.$anon_distinct_id", ctx.extra_junk)
            link = ids["anonymous_id"] != distinct
    elif name == "$create_alias":
        alias = check_id(props.get("alias"), "properties.alias", ctx.extra_junk)
        ids = {"login_id": alias, "anonymous_id": distinct}
        kind, link = "link", alias != distinct
    else:
        anonymous = props.get("$is_identified") is False or props.get("$device_id") == distinct
        ids = {"anonymous_id" if anonymous else "login_id": distinct}
    identities = order_identities(ids)

    profile_ops: list[tuple[str, dict[str, Any]]] = []
    for key, op in PROFILE_KEYS.items():
        value = props.pop(key, None)
        if value is None:
            value = ev.get(key)
        if value is None:
            continue
        if op == "unset" and isinstance(value, list):
            if not all(isinstance(k, str) for k in value):
                raise InvalidInput(key, "must list property names")
            value = dict.fromkeys(value, True)
        profile_ops.append((op, check_properties(value, key, LENIENT_RULES)))

    base: dict[str, Any] = {
        "project": ctx.project.name, "time_ms": time_ms, "received_ms": ctx.now_ms,
        "source": SOURCE, "distinct_id": distinct,
    }
    records: list[Record] = []
    if name not in PROFILE_ONLY_EVENTS:
        records.append(Record(kind=kind, event=name, event_id=event_id,
                              identities=identities, link=link, properties=props, **base))
    for op, values in profile_ops:
        if values:
            records.append(Record(kind="profile", op=op, event_id=f"{event_id}:{op}",
                                  identities=dict(identities), properties=values, **base))
    return records
