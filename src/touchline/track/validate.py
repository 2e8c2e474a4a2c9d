"""Shared validation rules for the collection protocols.

Each check either returns the cleaned value or raises
:class:`~touchline.errors.InvalidInput` naming the field (a dotted path inside the
record) and the rule it broke. The protocol adapters call them per record and turn
the exception into a per-record error, so that one bad record never costs the
good ones in the same batch.

What differs between protocols is data, not code: :class:`PropertyRules` holds
the strict Sensors rules (variable-like names, reserved names, flat values) and
the lenient rules that Segment and PostHog clients rely on (free-form names such
as ``"Order Completed"``, nested objects).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..errors import InvalidInput
from .records import ID_PRIORITY, NAME_RE, RESERVED_PROPERTIES, is_junk_id

__all__ = [
    "ANONYMOUS_ID_TYPES",
    "LENIENT_RULES",
    "MAX_FUTURE_MS",
    "MAX_ID_LENGTH",
    "MAX_PAST_MS",
    "STRICT_RULES",
    "PropertyRules",
    "check_event_name",
    "check_id",
    "check_id_type",
    "check_name",
    "check_profile_properties",
    "check_properties",
    "check_time_window",
    "has_login_and_anonymous",
    "json_size",
    "order_identities",
    "parse_time",
    "skew_corrected",
]

MAX_ID_LENGTH = 255
MAX_FUTURE_MS = 3_600_000
MAX_PAST_MS = 2 * 365 * 86_400_000

# Identity types that name a device or browser rather than a person. An event that
# carries one of these next to a login id says "this person used this device":
# Sensors counts it as an explicit link. The mobile SDKs' device ids (Android id,
# OAID, IDFV...) belong here too.
ANONYMOUS_ID_TYPES = frozenset({
    "anonymous_id", "cookie_id", "device_id", "android_id", "android_uuid", "android_oaid",
    "oaid", "idfv", "idfa", "imei", "harmony_oaid", "mp_id",
})

# Rank of each identity type: ID_PRIORITY for the known ones; a custom type
# (a Sensors `$identity_employee_id`, say) names a person, so it ranks after the
# personal types and before the device ones.
_RANK = {name: i for i, name in enumerate(ID_PRIORITY)}
_CUSTOM_RANK = _RANK["device_id"] - 0.5
_DEVICE_RANK = _RANK["device_id"] + 0.5


@dataclass(frozen=True, slots=True)
class PropertyRules:
    """How strictly a protocol's property names and values are checked."""

    name_re: re.Pattern[str] | None
    reserved: frozenset[str]
    reserved_prefixes: tuple[str, ...]
    max_key_length: int
    max_string: int | None
    flat: bool  # values are scalars or lists of strings, never objects


STRICT_RULES = PropertyRules(
    name_re=NAME_RE,
    reserved=RESERVED_PROPERTIES,
    reserved_prefixes=("user_group", "user_tag"),
    max_key_length=100,
    max_string=8191,
    flat=True,
)

LENIENT_RULES = PropertyRules(
    name_re=None,
    reserved=frozenset(),
    reserved_prefixes=(),
    max_key_length=255,
    max_string=None,
    flat=False,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_id(value: Any, field: str, extra_junk: frozenset[str] = frozenset()) -> str:
    """An identity value: a non-junk string (numbers are accepted as text) of at
    most 255 characters."""
    if isinstance(value, bool) or value is None:
        raise InvalidInput(field, "must be a non-empty string")
    if isinstance(value, int | float):
        if isinstance(value, float) and not value.is_integer():
            raise InvalidInput(field, "must be a string")
        value = str(int(value))
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(field, f"longer than {MAX_ID_LENGTH} characters")
    if is_junk_id(value, extra_junk):
        raise InvalidInput(field, f"junk id {value!r} refused")
    return value


def check_id_type(name: str, field: str) -> str:
    if not NAME_RE.match(name) or name.startswith("$"):
        raise InvalidInput(field, "identity type must match [a-zA-Z_][a-zA-Z0-9_$]{0,99}")
    return name


def check_name(value: Any, field: str) -> str:
    """A Sensors-style name: ``[a-zA-Z_$][a-zA-Z0-9_$]{0,99}``."""
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    if not NAME_RE.match(value):
        raise InvalidInput(field, "must match [a-zA-Z_$][a-zA-Z0-9_$]{0,99}")
    return value


def check_event_name(value: Any, field: str, rules: PropertyRules) -> str:
    if rules.name_re is not None:
        return check_name(value, field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(field, "must be a non-empty string")
    if len(value) > 255:
        raise InvalidInput(field, "longer than 255 characters")
    if _CONTROL.search(value):
        raise InvalidInput(field, "contains control characters")
    return value


def _check_key(key: str, field: str, rules: PropertyRules) -> None:
    path = f"{field}.{key}"
    if rules.name_re is not None and not rules.name_re.match(key):
        raise InvalidInput(path, "property name must match [a-zA-Z_$][a-zA-Z0-9_$]{0,99}")
    if not key or len(key) > rules.max_key_length:
        raise InvalidInput(path, f"property name must be 1 to {rules.max_key_length} characters")
    lowered = key.lower()
    if lowered in rules.reserved or lowered.startswith(rules.reserved_prefixes):
        raise InvalidInput(path, "reserved property name")


def _check_string(value: str, path: str, rules: PropertyRules) -> None:
    if rules.max_string is not None and len(value) > rules.max_string:
        raise InvalidInput(path, f"string longer than {rules.max_string} characters")


# Property names already found valid, per rule set: the same few dozen names arrive
# on every event, and checking each against the name pattern again dominated decoding.
_KNOWN_GOOD: dict[PropertyRules, set[str]] = {}
_KNOWN_GOOD_MAX = 50_000


def check_properties(value: Any, field: str, rules: PropertyRules) -> dict[str, Any]:
    """Event or profile properties: an object whose names and values follow ``rules``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(field, "must be an object")
    good = _KNOWN_GOOD.setdefault(rules, set())
    max_string = rules.max_string
    for key, item in value.items():
        if key not in good:
            _check_key(key, field, rules)
            if len(good) < _KNOWN_GOOD_MAX:
                good.add(key)
        if isinstance(item, str):
            if max_string is not None and len(item) > max_string:
                _check_string(item, f"{field}.{key}", rules)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(f"{field}.{key}", "number must be finite")
        elif isinstance(item, list) and rules.flat:
            path = f"{field}.{key}"
            for i, element in enumerate(item):
                if not isinstance(element, str):
                    raise InvalidInput(f"{path}.{i}", "list elements must be strings")
                _check_string(element, f"{path}.{i}", rules)
        elif isinstance(item, dict) and rules.flat:
            raise InvalidInput(f"{field}.{key}", "objects are not allowed as property values")
    return dict(value)


def check_profile_properties(
    op: str, value: Any, field: str, rules: PropertyRules
) -> dict[str, Any]:
    """Properties of a profile operation, checked by what the operation needs."""
    if op == "delete":
        return {}
    props = check_properties(value, field, rules)
    if op == "increment":
        for key, item in props.items():
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise InvalidInput(f"{field}.{key}", "increment value must be a number")
    elif op == "append":
        for key, item in props.items():
            if not isinstance(item, list) or not all(isinstance(e, str) for e in item):
                raise InvalidInput(f"{field}.{key}", "append value must be a list of strings")
    elif op == "unset":
        props = dict.fromkeys(props, True)
    return props


def parse_time(value: Any, field: str) -> int:
    """Milliseconds since the epoch from an ISO 8601 text or a number of ms.

    A text without a zone is taken as UTC.
    """
    if isinstance(value, bool) or value is None:
        raise InvalidInput(field, "must be an ISO 8601 time or milliseconds since the epoch")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value < 1e14:
            raise InvalidInput(field, "milliseconds since the epoch out of range")
        return int(value)
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput(field, "must be an ISO 8601 time or milliseconds since the epoch")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(field, "not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        ms = int(parsed.timestamp() * 1000)
    except (OverflowError, ValueError, OSError):
        raise InvalidInput(field, "time out of range") from None
    if ms < 0:
        raise InvalidInput(field, "time before 1970")
    return ms


def skew_corrected(time_ms: int, sent_ms: int, now_ms: int) -> int:
    """The event time on the server's clock: ``received - (sent - event)``.

    Both client times come from the same (possibly wrong) clock, so their
    difference is trustworthy while each alone is not. A send before the event
    says nothing sensible; the event time is kept as is then.
    """
    if sent_ms < time_ms:
        return time_ms
    return max(0, now_ms - (sent_ms - time_ms))


def check_time_window(time_ms: int, now_ms: int, field: str = "time") -> None:
    """Sensors' rule: no more than 1 hour ahead of the server nor 2 years behind."""
    if time_ms > now_ms + MAX_FUTURE_MS:
        raise InvalidInput(field, "more than 1 hour in the future (set time_free to keep it)")
    if time_ms < now_ms - MAX_PAST_MS:
        raise InvalidInput(field, "more than 2 years in the past (set time_free to keep it)")


def json_size(value: Any) -> int:
    """Size in bytes of a value serialized as compact JSON."""
    return len(orjson.dumps(value))


def _rank(id_type: str) -> float:
    rank = _RANK.get(id_type)
    if rank is not None:
        return rank
    return _DEVICE_RANK if id_type in ANONYMOUS_ID_TYPES else _CUSTOM_RANK


def order_identities(ids: Mapping[str, str]) -> dict[str, str]:
    """The identities most trusted first (the first is the record's primary one)."""
    return dict(sorted(ids.items(), key=lambda kv: _rank(kv[0])))


def has_login_and_anonymous(ids: Mapping[str, str]) -> bool:
    """True when a login id travels with a device/browser id of another value."""
    login = ids.get("login_id")
    if login is None:
        return False
    return any(t in ANONYMOUS_ID_TYPES and v != login for t, v in ids.items())
