"""The Segment HTTP tracking API (also spoken by RudderStack's SDKs).

``POST /v1/{identify,track,page,screen,group,alias}`` carry one message,
``POST /v1/batch`` (``/v1/import``) a ``{"batch": [...], "context", "integrations", "sentAt",
"writeKey"}`` envelope whose context merges into each message (integrations only
route messages to destinations, which the collector has none of, so it is dropped).
The write key comes from the body's ``writeKey`` or ``Authorization: Basic
base64("<key>:")``. analytics.js (the browser library) posts the same messages
to one-letter paths (``/v1/t``, ``/v1/i``, ``/v1/p``...) with the key in each message.

Limits: 32 KB per message, 500 KB per request; invalid JSON or an oversize
request is a 400 for the whole request, while an oversize or invalid message
inside a batch only refuses that message.

Time: ``timestamp`` is the client's clock; with ``sentAt`` (also the client's
clock) the skew is removed as ``receivedAt - (sentAt - timestamp)``.
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
from .records import Record
from .sink import Project, ProjectDirectory
from .validate import (
    LENIENT_RULES,
    check_event_name,
    check_id,
    check_properties,
    json_size,
    order_identities,
    parse_time,
    skew_corrected,
)

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_MESSAGE_BYTES",
    "SEGMENT_PATHS",
    "SEGMENT_TYPES",
    "decode_segment",
    "segment_record",
]

SOURCE = "segment"
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
SEGMENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")

# The browser library (analytics.js) posts to one-letter paths: /v1/t, /v1/p...
SEGMENT_PATHS: Mapping[str, str] = {
    **{t: t for t in (*SEGMENT_TYPES, "batch")},
    "t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias",
    "b": "batch", "import": "batch",
}

# Event names given to the calls that have none of their own.
CALL_EVENTS: Mapping[str, str] = {
    "page": "$pageview", "screen": "$screen", "group": "$group", "alias": "$alias",
}


@dataclass(frozen=True, slots=True)
class _Context:
    project: Project
    now_ms: int
    sent_at: Any
    context: Mapping[str, Any]
    extra_junk: frozenset[str]


def _body(req: CollectRequest) -> dict[str, Any]:
    if len(req.body) > MAX_BATCH_BYTES:
        raise PayloadError("body", f"request larger than {MAX_BATCH_BYTES // 1024} KB")
    raw = gunzip_if_magic(req.body, "body", limit=4 * MAX_BATCH_BYTES)
    if len(raw) > MAX_BATCH_BYTES:
        raise PayloadError("body", f"request larger than {MAX_BATCH_BYTES // 1024} KB")
    body = loads_json(raw, "body")
    if not isinstance(body, dict):
        raise PayloadError("body", "must be a JSON object")
    return body


def _project(req: CollectRequest, body: Mapping[str, Any], projects: ProjectDirectory) -> Project:
    key = body.get("writeKey")
    if not isinstance(key, str) or not key:
        key = basic_auth_user(req.header("authorization"))
    if not key and isinstance(body.get("batch"), list) and body["batch"]:
        # analytics.js batches carry the key in each message, not in the envelope.
        first = body["batch"][0]
        key = first.get("writeKey") if isinstance(first, dict) else None
        key = key if isinstance(key, str) else None
    if not key:
        raise AuthError("missing write key: send writeKey in the body or Basic auth")
    project = projects.by_write_key(key)
    if project is None:
        raise AuthError("invalid write key")
    return project


def decode_segment(
    req: CollectRequest,
    projects: ProjectDirectory,
    now_ms: int,
    *,
    extra_junk: frozenset[str] = frozenset(),
) -> Decoded:
    """Decode a Segment request.

    Raises PayloadError (400: invalid JSON, oversize, no batch) or AuthError (401).
    """
    body = _body(req)
    project = _project(req, body, projects)
    call = SEGMENT_PATHS.get(req.path.rstrip("/").rsplit("/", 1)[-1], "")
    out = Decoded(dry_run=is_dry_run(req), project=project.name)
    if call == "batch":
        messages = body.get("batch")
        if not isinstance(messages, list):
            raise PayloadError("batch", "must be an array of messages")
        context = body.get("context")
        type_hint = None
    elif call in SEGMENT_TYPES:
        if len(body) and json_size(body) > MAX_MESSAGE_BYTES:
            raise PayloadError("body", f"message larger than {MAX_MESSAGE_BYTES // 1024} KB")
        messages, context, type_hint = [body], None, call
    else:
        raise PayloadError("path", f"unknown Segment call {req.path!r}")
    ctx = _Context(
        project=project, now_ms=now_ms, sent_at=body.get("sentAt"),
        context=context if isinstance(context, dict) else {},
        extra_junk=extra_junk,
    )
    for index, message in enumerate(messages):
        try:
            out.records.append(segment_record(message, ctx, type_hint))
        except InvalidInput as exc:
            out.refuse(index, exc)
    return out


def _time(msg: Mapping[str, Any], ctx: _Context) -> int:
    stamp = msg.get("timestamp", msg.get("originalTimestamp"))
    if stamp is None:
        return ctx.now_ms
    time_ms = parse_time(stamp, "timestamp")
    sent = msg.get("sentAt", ctx.sent_at)
    if sent is None:
        return time_ms
    return skew_corrected(time_ms, parse_time(sent, "sentAt"), ctx.now_ms)


def _message_id(msg: Mapping[str, Any]) -> str:
    value = msg.get("messageId")
    if value is None:
        return content_hash(msg)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidInput("messageId", "must be a string of 1 to 255 characters")
    return value


def segment_record(msg: Any, ctx: _Context, type_hint: str | None = None) -> Record:
    """One Segment message as a Record; raises InvalidInput naming the field."""
    if not isinstance(msg, dict):
        raise InvalidInput("record", "must be a JSON object")
    call = type_hint or msg.get("type")
    if not isinstance(call, str) or call not in SEGMENT_TYPES:
        raise InvalidInput("type", f"unknown message type {call!r}")
    if json_size(msg) > MAX_MESSAGE_BYTES:
        raise InvalidInput("record", f"message larger than {MAX_MESSAGE_BYTES // 1024} KB")

    ids: dict[str, str] = {}
    user_id = msg.get("userId")
    anonymous_id = msg.get("anonymousId")
    if call == "alias":
        ids["login_id"] = check_id(user_id, "userId", ctx.extra_junk)
        ids["anonymous_id"] = check_id(msg.get("previousId"), "previousId", ctx.extra_junk)
    else:
        if user_id is None and anonymous_id is None:
            raise InvalidInput("userId", "userId or anonymousId is required")
        if user_id is not None:
            ids["login_id"] = check_id(user_id, "userId", ctx.extra_junk)
        if anonymous_id is not None:
            ids["anonymous_id"] = check_id(anonymous_id, "anonymousId", ctx.extra_junk)
    identities = order_identities(ids)
    distinct = ids.get("login_id") or ids["anonymous_id"]
    both = len(set(ids.values())) == 2
    base: dict[str, Any] = {
        "project": ctx.project.name, "event_id": _message_id(msg), "time_ms": _time(msg, ctx),
        "received_ms": ctx.now_ms, "source": SOURCE, "distinct_id": distinct,
        "identities": identities,
    }

    if call == "identify":
        traits = check_properties(msg.get("traits"), "traits", LENIENT_RULES)
        return Record(kind="profile", op="set", properties=traits, link=both, **base)
    if call == "alias":
        return Record(kind="link", event=CALL_EVENTS["alias"], link=True, **base)

    context = msg.get("context")
    context = {**ctx.context, **(context if isinstance(context, dict) else {})}
    if call == "track":
        event = check_event_name(msg.get("event"), "event", LENIENT_RULES)
        properties = check_properties(msg.get("properties"), "properties", LENIENT_RULES)
    elif call == "group":
        event = CALL_EVENTS["group"]
        group_id = check_id(msg.get("groupId"), "groupId", ctx.extra_junk)
        traits = check_properties(msg.get("traits"), "traits", LENIENT_RULES)
        properties = {"group_id": group_id, "group_traits": traits}
    else:  # page, screen
        event = CALL_EVENTS[call]
        properties = check_properties(msg.get("properties"), "properties", LENIENT_RULES)
        for key in ("name", "category"):
            value = msg.get(key)
            if isinstance(value, str):
                properties.setdefault(key, value)
    library = context.get("library")
    if isinstance(library, dict):
        for key, prop in (("name", "$lib"), ("version", "$lib_version")):
            if isinstance(library.get(key), str):
                properties.setdefault(prop, library[key])
    if context:
        properties.setdefault("$context", context)
    return Record(kind="track", event=event, properties=properties, **base)
