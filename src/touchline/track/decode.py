"""Shared decoding for the collection protocols.

A protocol adapter is a pure function from a :class:`CollectRequest` (what arrived
over HTTP, already read into memory) to a :class:`Decoded` (the records that passed
validation and the errors of those that did not). The helpers here undo the
transport layers the clients pile on top of JSON: form bodies, base64 (standard or
URL-safe, padded or not), gzip (detected by its magic bytes, whatever the headers
claim) and JSON itself, with limits on size and nesting depth so that a hostile
body costs bounded memory and time.

Whole-request failures raise :class:`~touchline.errors.PayloadError` (the request
could not be decoded at all) or :class:`~touchline.errors.AuthError`; per-record
failures are collected in ``Decoded.errors`` so that the good records of a batch
are kept.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import xxhash

from ..errors import InvalidInput, PayloadError
from .records import Record

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "MAX_DECODED_BYTES",
    "MAX_JSON_DEPTH",
    "CollectRequest",
    "DecodeOptions",
    "Decoded",
    "b64decode",
    "basic_auth_user",
    "content_hash",
    "gunzip_if_magic",
    "is_dry_run",
    "java_string_hash",
    "json_depth",
    "loads_json",
    "parse_form",
    "utf8",
]

# A decompressed body larger than this is refused: gzip shrinks repetitive JSON
# a thousandfold, so the compressed size alone says little.
MAX_DECODED_BYTES = 20 * 1024 * 1024

# No client nests deeper than a handful of levels (Segment's context is the
# deepest, at about 4); 32 leaves room while bounding recursion downstream.
MAX_JSON_DEPTH = 32

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """The settings record validation follows, wherever it runs (collector or pipeline)."""

    time_window: bool = True
    extra_junk: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeOptions:
        junk = str(settings.junk_ids or "")
        return cls(
            time_window=bool(settings.sensors_time_window),
            extra_junk=frozenset(v.strip().lower() for v in junk.split(",") if v.strip()),
        )


@dataclass(frozen=True, slots=True)
class CollectRequest:
    """One HTTP request as the adapters see it. Header names are lower case."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(slots=True)
class Decoded:
    """The outcome of decoding one request.

    ``errors`` carry ``index`` = the position of the refused record in the
    request's batch (None for a problem of the request as a whole that still let
    some records through). ``dry_run`` is set when the client asked for
    validation only (the ``Dry-Run: true`` header): nothing may be stored.
    """

    records: list[Record] = field(default_factory=list)
    errors: list[InvalidInput] = field(default_factory=list)
    dry_run: bool = False
    project: str | None = None

    def refuse(self, index: int | None, error: InvalidInput) -> None:
        error.index = index
        # Keep the message in step with the index, which was unknown when raised.
        error.args = (f"record {index}: {error.field}: {error.rule}" if index is not None
                      else f"{error.field}: {error.rule}",)
        self.errors.append(error)

    def error_dicts(self) -> list[dict[str, object]]:
        return [e.as_dict() for e in self.errors]


def is_dry_run(req: CollectRequest) -> bool:
    return (req.header("dry-run") or "").strip().lower() in ("true", "1", "yes")


def utf8(data: bytes, field: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(field, f"not valid UTF-8 (byte {exc.start})") from None


def parse_form(body: bytes, field: str = "body") -> dict[str, str]:
    """A form-urlencoded body as a dict (the last value of a repeated name wins).

    Used for whatever the content type says: ``navigator.sendBeacon`` sends form
    text as ``text/plain``.
    """
    text = utf8(body, field)
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict",
                                       max_num_fields=1000)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(field, f"not a valid form body ({exc})") from None
    return dict(pairs)


_B64_TRANSLATE = bytes.maketrans(b"-_ ", b"+/+")


def b64decode(text: str | bytes, field: str) -> bytes:
    """Decode base64 leniently: standard or URL-safe alphabet, padding optional,
    whitespace ignored, and a ``+`` that a form decoder turned into a space restored."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = raw.strip().translate(_B64_TRANSLATE, b"\r\n\t")
    raw += b"=" * (-len(raw) % 4)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(field, "not valid base64") from None


def gunzip_if_magic(data: bytes, field: str, limit: int = MAX_DECODED_BYTES) -> bytes:
    """Gunzip ``data`` when it starts with the gzip magic bytes, else return it."""
    if not data.startswith(GZIP_MAGIC):
        return data
    out = bytearray()
    rest = data
    try:
        # A gzip file may hold several members back to back; decode them all.
        while rest.startswith(GZIP_MAGIC):
            d = zlib.decompressobj(wbits=31)
            out += d.decompress(rest, limit + 1 - len(out))
            if len(out) > limit:
                raise PayloadError(field, f"decompressed size over {limit} bytes")
            if not d.eof:
                raise PayloadError(field, "gzip data is truncated")
            rest = d.unused_data
    except zlib.error:
        raise PayloadError(field, "not valid gzip") from None
    return bytes(out)


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), without recursion."""
    if not isinstance(value, dict | list):
        return 0
    depth = 0
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        node, d = stack.pop()
        depth = max(depth, d)
        # Only containers are pushed: most values are scalars, and this runs on
        # every request body.
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, d + 1))
    return depth


def loads_json(data: bytes | str, field: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(field, f"invalid JSON ({exc.msg})") from None
    if max_depth and json_depth(value) > max_depth:
        raise PayloadError(field, f"JSON nested deeper than {max_depth} levels")
    return value


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode`` as a signed 32-bit int (the Sensors JS ``crc``)."""
    h = 0
    # Iterate UTF-16 code units, as JavaScript's charCodeAt does.
    raw = text.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(raw), 2):
        h = (31 * h + (raw[i] | raw[i + 1] << 8)) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def content_hash(value: Any, *, strict: bool = False) -> str:
    """A stable id for a JSON value: the hash of its canonical (key-sorted) form.

    A value the serializer refuses (too deep, not JSON) is hashed by its ``repr``,
    or raises ValueError when ``strict``: a ``repr`` of a deep value can itself
    exhaust the recursion limit.
    """
    try:
        canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        if strict:
            raise ValueError("value cannot be serialized as JSON") from None
        canonical = repr(value).encode("utf-8", "replace")
    return xxhash.xxh3_128_hexdigest(canonical)


def basic_auth_user(header: str | None) -> str | None:
    """The user part of ``Authorization: Basic base64(user:password)``, if any."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, _, _ = decoded.partition(":")
    return user or None
