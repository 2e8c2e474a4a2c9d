"""The Sensors Analytics collection protocol (Python, Java, Android, iOS and JS SDKs).

Transport (see protocols.md): ``data=<record>`` or ``data_list=<array>`` in the query
string (JS image mode) or a form body (everything else, including ``sendBeacon``'s
``text/plain``), each base64 of JSON, gzipped when ``gzip=1`` (detected by magic
bytes anyway). The JS SDK adds ``ext=crc=N``, Java's ``String.hashCode`` of the
base64 text, which catches URLs truncated in transit.

The project comes from the record's own ``project`` field, else the ``project``
query parameter, else ``default``. An unknown project refuses the record but the
reply stays 200: Android resends forever on 403/404.

Each record's ``event_id`` is a hash of its content without ``_flush_time``, so the
JS SDK's resends of a batch (same records, new flush time) collapse into one.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput, PayloadError
from .decode import (
    MAX_JSON_DEPTH,
    CollectRequest,
    Decoded,
    DecodeOptions,
    b64decode,
    content_hash,
    gunzip_if_magic,
    is_dry_run,
    java_string_hash,
    loads_json,
    parse_form,
)
from .raw import RawBatch
from .records import Record, RecordKind
from .sink import ProjectDirectory
from .validate import (
    STRICT_RULES,
    check_id,
    check_id_type,
    check_name,
    check_profile_properties,
    check_properties,
    check_time_window,
    has_login_and_anonymous,
    order_identities,
    skew_corrected,
)

__all__ = [
    "SENSORS_TYPES", "decode_sensors", "decode_sensors_raw", "sensors_body", "sensors_payload",
    "sensors_raw_batch", "sensors_record",
]

SOURCE = "sensors"

# Sensors record type -> (record kind, operation, default event name).
SENSORS_TYPES: Mapping[str, tuple[RecordKind, str | None, str | None]] = {
    "track": ("track", None, None),
    "track_signup": ("track", None, "$SignUp"),
    "track_id_bind": ("link", None, "$BindID"),
    "track_id_unbind": ("unlink", None, "$UnbindID"),
    "profile_set": ("profile", "set", None),
    "profile_set_once": ("profile", "set_once", None),
    "profile_increment": ("profile", "increment", None),
    "profile_append": ("profile", "append", None),
    "profile_unset": ("profile", "unset", None),
    "profile_delete": ("profile", "delete", None),
    "item_set": ("item", "set", None),
    "item_delete": ("item", "delete", None),
}

# `lib` fields that become event properties, as Sensors stores them.
LIB_KEYS = ("$lib", "$lib_version", "$lib_method", "$lib_detail", "$app_version")

# Property keys that carry instructions to the collector, not data.
CONTROL_KEYS = ("$is_login_id", "$project", "$token")

IDENTITY_PREFIX = "$identity_"

# `$identity_xxx` becomes type `xxx`, except where Sensors' name for a type we
# know differs: the WeChat mini program SDK's openid and unionid keys. A unionid
# is shared by the mini program and the official account of one brand, which is
# what lets the two channels stitch into one customer.
IDENTITY_ALIASES: Mapping[str, str] = {"mp_openid": "openid", "mp_unionid": "unionid"}


@dataclass(frozen=True, slots=True)
class _Context:
    projects: ProjectDirectory
    request_project: str
    now_ms: int
    time_window: bool
    extra_junk: frozenset[str]


def sensors_body(req: CollectRequest, *, inflate: bool = True) -> tuple[bytes, str, dict[str, str]]:
    """The JSON text of a request's records (left gzipped if it came so, unless
    ``inflate``), the field it came in, and the request's parameters (query merged
    with form). Raises PayloadError when there is none."""
    params = dict(req.query)
    body = req.body.strip()
    if body[:1] in (b"{", b"["):
        # Some server SDKs post the JSON itself rather than a form.
        return body, "body", params
    if body:
        params.update(parse_form(body))
    if "data_list" in params:
        field = "data_list"
    elif "data" in params:
        field = "data"
    else:
        raise PayloadError("data", "missing: send data=... or data_list=...")
    _check_crc(params[field], params)
    text = params[field].strip()
    if text[:1] in ("{", "["):
        # The JS SDK sends the JSON text as is when the browser cannot base64 it.
        return text.encode("utf-8"), field, params
    raw = b64decode(text, field)
    return (gunzip_if_magic(raw, field) if inflate else raw), field, params


def sensors_payload(req: CollectRequest) -> tuple[list[Any], dict[str, str]]:
    """The raw records of a request and its parameters (query merged with form).

    Raises PayloadError when the request holds no decodable records.
    """
    raw, field, params = sensors_body(req)
    return _as_list(loads_json(raw, field)), params


def sensors_raw_batch(req: CollectRequest, now_ms: int) -> RawBatch:
    """A request made ready for the log with its records not yet decoded (see
    :mod:`touchline.track.raw`): only the form, the crc and base64 are undone here.
    Gunzipping and parsing wait for the pipeline: the reply is 200 whatever they find,
    and the log keeps the batch compressed."""
    raw, _, params = sensors_body(req, inflate=False)
    return RawBatch(protocol=SOURCE, project=params.get("project") or "default",
                    received_ms=now_ms, body=raw)


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    raise PayloadError("data", "must be a JSON object or an array of objects")


def _check_crc(text: str, params: Mapping[str, str]) -> None:
    crc = params.get("crc")
    ext = params.get("ext")
    if crc is None and ext:
        crc = urllib.parse.parse_qs(ext).get("crc", [None])[0]
    if crc is None:
        return
    try:
        expected = int(crc)
    except ValueError:
        raise PayloadError("ext.crc", "must be an integer") from None
    # Clients hash the base64 text as they built it; a form decoder may have turned
    # an unescaped '+' into a space, and some clients end the text with a newline.
    variants = {text, text.strip(), text.replace(" ", "+"), text.strip().replace(" ", "+")}
    if expected not in {java_string_hash(v) for v in variants}:
        raise PayloadError("ext.crc", "does not match the data (truncated or altered in transit)")


def decode_sensors(
    req: CollectRequest,
    projects: ProjectDirectory,
    now_ms: int,
    *,
    time_window: bool = True,
    extra_junk: frozenset[str] = frozenset(),
) -> Decoded:
    """Decode a Sensors request. Raises PayloadError when nothing can be decoded."""
    raw_records, params = sensors_payload(req)
    project = params.get("project") or "default"
    out = Decoded(dry_run=is_dry_run(req), project=project)
    ctx = _Context(projects, project, now_ms, time_window, extra_junk)
    _decode_records(raw_records, ctx, out)
    return out


def decode_sensors_raw(batch: RawBatch, projects: ProjectDirectory,
                       options: DecodeOptions) -> Decoded:
    """Validate the records of a batch the collector logged undecoded. Raises
    PayloadError when the batch as a whole is not gzip or JSON."""
    text = gunzip_if_magic(batch.body, "data")
    # No depth check: only flat properties are kept, and a record nested too deep
    # for the serializer is refused alone (sensors_record).
    raw_records = _as_list(loads_json(text, "data", max_depth=0))
    out = Decoded(project=batch.project)
    ctx = _Context(projects, batch.project, batch.received_ms, options.time_window,
                   options.extra_junk)
    _decode_records(raw_records, ctx, out)
    return out


def _decode_records(raw_records: list[Any], ctx: _Context, out: Decoded) -> None:
    for index, raw in enumerate(raw_records):
        try:
            out.records.append(sensors_record(raw, ctx))
        except InvalidInput as exc:
            out.refuse(index, exc)


def _int_ms(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(field, "must be milliseconds since the epoch (an integer)")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidInput(field, "must be an integer")
    if not 0 <= value < 10**14:
        raise InvalidInput(field, "milliseconds since the epoch out of range")
    return int(value)


def sensors_record(raw: Any, ctx: _Context) -> Record:
    """One Sensors record as a Record; raises InvalidInput naming the field."""
    if not isinstance(raw, dict):
        raise InvalidInput("record", "must be a JSON object")
    type_ = raw.get("type")
    if not isinstance(type_, str) or type_ not in SENSORS_TYPES:
        raise InvalidInput("type", f"unknown record type {type_!r}")
    kind, op, default_event = SENSORS_TYPES[type_]

    project_name = raw.get("project")
    if not isinstance(project_name, str) or not project_name:
        project_name = ctx.request_project
    project = ctx.projects.by_name(project_name)
    if project is None:
        raise InvalidInput("project", f"unknown project {project_name!r}")

    time_ms = _int_ms(raw.get("time"), "time")
    flush = raw.get("_flush_time")
    if flush is not None:
        # The send time, like Segment's sentAt: corrects the client's clock.
        time_ms = skew_corrected(time_ms, _int_ms(flush, "_flush_time"), ctx.now_ms)
    if ctx.time_window and raw.get("time_free") is not True:
        check_time_window(time_ms, ctx.now_ms)

    props_in = raw.get("properties")
    if props_in is not None and not isinstance(props_in, dict):
        raise InvalidInput("properties", "must be an object")
    props = dict(props_in or {})
    login_flag = props.get("$is_login_id") is True
    for key in CONTROL_KEYS:
        props.pop(key, None)

    # The event id hashes the record as sent, minus the flush time that changes
    # on every resend.
    try:
        event_id = content_hash({k: v for k, v in raw.items() if k != "_flush_time"},
                                strict=True)
    except ValueError:
        # Only a record nested past the serializer's limit gets here (the decoder's
        # depth check is skipped for logged-undecoded batches, see raw.py).
        raise InvalidInput("record", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    base: dict[str, Any] = {
        "project": project.name, "event_id": event_id, "time_ms": time_ms,
        "received_ms": ctx.now_ms, "source": SOURCE,
    }

    if kind == "item":
        item_type = check_name(raw.get("item_type"), "item_type")
        item_id = _item_id(raw.get("item_id"))
        properties = {} if op == "delete" else check_properties(props, "properties", STRICT_RULES)
        return Record(kind="item", op=op, item_type=item_type, item_id=item_id,
                      properties=properties, **base)

    distinct_id = check_id(raw.get("distinct_id"), "distinct_id", ctx.extra_junk)
    identities = _identities(raw, type_, distinct_id, login_flag, ctx.extra_junk)

    if kind == "profile":
        assert op is not None
        properties = check_profile_properties(op, props, "properties", STRICT_RULES)
        return Record(kind="profile", op=op, distinct_id=distinct_id, identities=identities,
                      properties=properties, **base)

    event = raw.get("event")
    event = check_name(default_event if event is None else event, "event")
    properties = check_properties(props, "properties", STRICT_RULES)
    lib = raw.get("lib")
    if isinstance(lib, dict):
        for key in LIB_KEYS:
            value = lib.get(key)
            if isinstance(value, str) and len(value) <= 8191:
                properties.setdefault(key, value)

    if kind == "link" and len(identities) < 2:
        raise InvalidInput("identities", "a bind needs at least two identities")
    link = kind == "link" or type_ == "track_signup" or (
        kind == "track" and has_login_and_anonymous(identities))
    return Record(kind=kind, event=event, distinct_id=distinct_id, identities=identities,
                  link=link, properties=properties, **base)


def _item_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise InvalidInput("item_id", "must be a non-empty string")
    if len(value) > 255:
        raise InvalidInput("item_id", "longer than 255 characters")
    return value


def _identities(
    raw: dict[str, Any], type_: str, distinct_id: str, login_flag: bool,
    extra_junk: frozenset[str],
) -> dict[str, str]:
    ids: dict[str, str] = {}
    given = raw.get("identities")
    if given is not None and not isinstance(given, dict):
        raise InvalidInput("identities", "must be an object")
    for key, value in (given or {}).items():
        field = f"identities.{key}"
        id_type = key[len(IDENTITY_PREFIX):] if key.startswith(IDENTITY_PREFIX) else key
        id_type = IDENTITY_ALIASES.get(id_type, id_type)
        ids[check_id_type(id_type, field)] = check_id(value, field, extra_junk)
    if type_ == "track_id_unbind":
        if not ids:
            raise InvalidInput("identities", "an unbind names the identity to detach")
        return ids
    if type_ == "track_signup":
        original = check_id(raw.get("original_id"), "original_id", extra_junk)
        ids.setdefault("login_id", distinct_id)
        if original not in ids.values():
            ids.setdefault("anonymous_id", original)
    elif not ids:
        # ID-Mapping 2 clients: the distinct id is a login id when flagged so,
        # an anonymous (device or browser) id otherwise.
        ids["login_id" if login_flag else "anonymous_id"] = distinct_id
    for top in ("login_id", "anonymous_id"):
        # The JS SDK repeats its ids at the top level.
        value = raw.get(top)
        if value is not None and top not in ids:
            ids[top] = check_id(value, top, extra_junk)
    return order_identities(ids)
