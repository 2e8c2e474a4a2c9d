"""The audience condition language: parsed from JSON/YAML into typed nodes.

A definition is a tree of nodes, each a mapping with one key that says what it is::

    all: [...]            every child holds          any: [...]   at least one holds
    not: {...}            the child does not hold
    trait: city           profile property test: op, value
    performed: order_paid count (or an aggregate of a property) of an event, in a window
    not_performed: x      performed x zero times in the window
    first_performed: x    time of the first x: within / more_than (durations),
    last_performed: x       before / after (absolute times)
    in_segment: name      member of another segment (not_in_segment: the opposite)
    rfm_layer: name       RFM layer from the analysis engine; ``spec``: the RFM analysis
    lifecycle_stage: name lifecycle status (new, returning, resurrecting, dormant) in
                          the last period of ``spec``, a lifecycle analysis
    bucket: [from, to]    stable hash of user and salt into 0..99, from <= b < to

Property tests (traits, and the ``where`` filters of event conditions) use the
operators in :data:`PROPERTY_OPS`. Numbers compare with JSON numbers only, strings
with JSON strings only, booleans with JSON booleans; a missing property fails
every test except ``!=``, ``not_in``, ``not_contains`` and ``not_set``.

Windows of event conditions: ``within: 7d`` (the last 7 days up to the time of
evaluation), ``from``/``to`` (absolute, ISO 8601, ``to`` exclusive), or none
(all time). An event counts only once its own time has come.

Errors are :class:`InvalidInput` whose ``field`` is the path in the definition,
for example ``conditions.all[2].within``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import yaml

from ..errors import InvalidInput
from ..track.records import NAME_RE

__all__ = [
    "AGGREGATES",
    "COMPARE_OPS",
    "PROPERTY_OPS",
    "All",
    "AnyOf",
    "Bucket",
    "Condition",
    "Definition",
    "FirstLast",
    "InSegment",
    "Layer",
    "Not",
    "Performed",
    "PropTest",
    "Trait",
    "Window",
    "event_leaves",
    "load_definition",
    "parse_condition",
    "parse_definition",
    "parse_duration_ms",
    "parse_time_ms",
    "referenced_segments",
    "walk",
]

PROPERTY_OPS = (
    "=", "!=", ">", ">=", "<", "<=", "in", "not_in", "contains", "not_contains",
    "is_set", "not_set",
)
COMPARE_OPS = ("=", "!=", ">", ">=", "<", "<=", "between")
AGGREGATES = ("count", "sum", "avg", "min", "max")

Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class PropTest:
    """``property op value`` over a JSON object of properties."""

    prop: str
    op: str
    value: Scalar | tuple[Scalar, ...] | None


@dataclass(frozen=True, slots=True)
class Window:
    """Relative (``last_ms``) or absolute (``start_ms`` <= t < ``end_ms``); empty: all time."""

    last_ms: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Trait:
    test: PropTest


@dataclass(frozen=True, slots=True)
class Performed:
    event: str
    where: tuple[PropTest, ...]
    aggregate: str  # one of AGGREGATES
    prop: str | None  # the aggregated property; None for count
    op: str  # one of COMPARE_OPS
    value: tuple[float, ...]  # one number, two for between
    window: Window


@dataclass(frozen=True, slots=True)
class FirstLast:
    which: Literal["first", "last"]
    event: str
    where: tuple[PropTest, ...]
    when: Literal["within", "more_than", "before", "after"]
    ms: int  # a duration for within/more_than, a time for before/after


@dataclass(frozen=True, slots=True)
class InSegment:
    segment: str


@dataclass(frozen=True, slots=True)
class Layer:
    kind: Literal["rfm", "lifecycle"]
    name: str
    spec: dict[str, Any]  # the analysis spec that defines the layers


@dataclass(frozen=True, slots=True)
class Bucket:
    salt: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class All:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition


Condition = Trait | Performed | FirstLast | InSegment | Layer | Bucket | All | AnyOf | Not

_DURATION_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_KINDS = (
    "all", "any", "not", "trait", "performed", "not_performed", "first_performed",
    "last_performed", "in_segment", "not_in_segment", "rfm_layer", "lifecycle_stage", "bucket",
)


def parse_duration_ms(raw: Any, path: str) -> int:
    """``30m``, ``2h``, ``7d``, ``1w`` (or a number of seconds) to milliseconds."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw * 1000
    if isinstance(raw, str):
        m = _DURATION_RE.match(raw)
        if m and int(m.group(1)) > 0:
            return int(m.group(1)) * _UNIT_MS[m.group(2)]
    raise InvalidInput(path, "must be a positive duration such as 30m, 2h, 7d or 1w")


def parse_time_ms(raw: Any, path: str) -> int:
    """An ISO 8601 time (UTC when it names no offset) or epoch milliseconds."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, datetime):
        dt = raw
    elif isinstance(raw, date):  # YAML reads an unquoted 2026-11-01 as a date
        dt = datetime(raw.year, raw.month, raw.day)
    elif isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(path, "must be an ISO 8601 time such as 2026-11-01T00:00:00Z") from None
    else:
        raise InvalidInput(path, "must be an ISO 8601 time such as 2026-11-01T00:00:00Z")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _name(raw: Any, path: str) -> str:
    if not isinstance(raw, str) or not NAME_RE.match(raw):
        raise InvalidInput(path, "must be a name of letters, digits, _ or $ (not starting with a digit)")
    return raw


def _text(raw: Any, path: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput(path, "must be a non-empty string")
    return raw


def _scalar(raw: Any, path: str) -> Scalar:
    if isinstance(raw, str | bool | int | float):
        if isinstance(raw, float) and raw != raw:
            raise InvalidInput(path, "must not be NaN")
        return raw
    raise InvalidInput(path, "must be a string, number or boolean")


def _number(raw: Any, path: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != raw:
        raise InvalidInput(path, "must be a number")
    return float(raw)


def _only(node: dict[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(node) - allowed)
    if extra:
        raise InvalidInput(f"{path}.{extra[0]}", f"unknown key; allowed here: {', '.join(sorted(allowed))}")


def _prop_test(node: Any, path: str, prop_key: str) -> PropTest:
    if not isinstance(node, dict):
        raise InvalidInput(path, "must be an object")
    prop = _name(node.get(prop_key), f"{path}.{prop_key}")
    op = node.get("op", "=")
    if op not in PROPERTY_OPS:
        raise InvalidInput(f"{path}.op", f"must be one of {', '.join(PROPERTY_OPS)}")
    value: Scalar | tuple[Scalar, ...] | None
    if op in ("is_set", "not_set"):
        if "value" in node:
            raise InvalidInput(f"{path}.value", f"must not be given with {op}")
        value = None
    elif op in ("in", "not_in"):
        raw = node.get("value")
        if not isinstance(raw, list) or not raw:
            raise InvalidInput(f"{path}.value", f"must be a non-empty list with {op}")
        value = tuple(_scalar(v, f"{path}.value[{i}]") for i, v in enumerate(raw))
    else:
        if "value" not in node:
            raise InvalidInput(f"{path}.value", "is required")
        value = _scalar(node["value"], f"{path}.value")
        if op in ("contains", "not_contains") and not isinstance(value, str):
            raise InvalidInput(f"{path}.value", f"must be a string with {op}")
        if op in (">", ">=", "<", "<=") and isinstance(value, bool):
            raise InvalidInput(f"{path}.value", f"must be a number or string with {op}")
    _only(node, {prop_key, "op", "value"}, path)
    return PropTest(prop, op, value)


def _where(node: dict[str, Any], path: str) -> tuple[PropTest, ...]:
    raw = node.get("where", [])
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise InvalidInput(f"{path}.where", "must be a list of property tests")
    return tuple(_prop_test(t, f"{path}.where[{i}]", "property") for i, t in enumerate(raw))


def _window(node: dict[str, Any], path: str) -> Window:
    if "within" in node:
        if "from" in node or "to" in node:
            raise InvalidInput(f"{path}.within", "give either within or from/to, not both")
        return Window(last_ms=parse_duration_ms(node["within"], f"{path}.within"))
    start = parse_time_ms(node["from"], f"{path}.from") if "from" in node else None
    end = parse_time_ms(node["to"], f"{path}.to") if "to" in node else None
    if start is not None and end is not None and end <= start:
        raise InvalidInput(f"{path}.to", "must be after from")
    return Window(start_ms=start, end_ms=end)


def _performed(node: dict[str, Any], path: str, negated: bool) -> Performed:
    key = "not_performed" if negated else "performed"
    event = _name(node[key], f"{path}.{key}")
    where = _where(node, path)
    window = _window(node, path)
    if negated:
        _only(node, {key, "where", "within", "from", "to"}, path)
        return Performed(event, where, "count", None, "=", (0.0,), window)
    aggregate, prop = "count", None
    raw_agg = node.get("aggregate", "count")
    if isinstance(raw_agg, dict) and len(raw_agg) == 1:
        aggregate, raw_prop = next(iter(raw_agg.items()))
        prop = _name(raw_prop, f"{path}.aggregate.{aggregate}")
    elif raw_agg != "count":
        raise InvalidInput(f"{path}.aggregate", "must be count or {sum|avg|min|max: property}")
    if aggregate not in AGGREGATES or (aggregate == "count" and prop is not None):
        raise InvalidInput(f"{path}.aggregate", "must be count or {sum|avg|min|max: property}")
    op = node.get("op", ">=")
    if op not in COMPARE_OPS:
        raise InvalidInput(f"{path}.op", f"must be one of {', '.join(COMPARE_OPS)}")
    raw_value = node.get("value", 1)
    if op == "between":
        if not isinstance(raw_value, list) or len(raw_value) != 2:
            raise InvalidInput(f"{path}.value", "must be [low, high] with between")
        value = tuple(_number(v, f"{path}.value[{i}]") for i, v in enumerate(raw_value))
        if value[0] > value[1]:
            raise InvalidInput(f"{path}.value", "low must not be above high")
    else:
        value = (_number(raw_value, f"{path}.value"),)
    _only(node, {key, "where", "within", "from", "to", "aggregate", "op", "value"}, path)
    return Performed(event, where, aggregate, prop, op, value, window)


def _first_last(node: dict[str, Any], path: str, which: Literal["first", "last"]) -> FirstLast:
    key = f"{which}_performed"
    event = _name(node[key], f"{path}.{key}")
    whens = [w for w in ("within", "more_than", "before", "after") if w in node]
    if len(whens) != 1:
        raise InvalidInput(path, "needs exactly one of within, more_than, before, after")
    when = whens[0]
    if when in ("within", "more_than"):
        ms = parse_duration_ms(node[when], f"{path}.{when}")
    else:
        ms = parse_time_ms(node[when], f"{path}.{when}")
    _only(node, {key, "where", when}, path)
    return FirstLast(which, event, _where(node, path), when, ms)


def _bucket(node: dict[str, Any], path: str) -> Bucket:
    raw = node["bucket"]
    if (
        not isinstance(raw, list) or len(raw) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
        or not 0 <= raw[0] < raw[1] <= 100
    ):
        raise InvalidInput(f"{path}.bucket", "must be [from, to] with 0 <= from < to <= 100")
    salt = node.get("salt", "")
    if not isinstance(salt, str):
        raise InvalidInput(f"{path}.salt", "must be a string")
    _only(node, {"bucket", "salt"}, path)
    return Bucket(salt, raw[0], raw[1])


def parse_condition(node: Any, path: str = "conditions") -> Condition:
    """Validate one node (and its children); raise InvalidInput naming the path."""
    if not isinstance(node, dict):
        raise InvalidInput(path, "must be an object with one of: " + ", ".join(_KINDS))
    kinds = [k for k in _KINDS if k in node]
    if len(kinds) != 1:
        if not kinds:
            raise InvalidInput(path, "must have one of: " + ", ".join(_KINDS))
        raise InvalidInput(path, f"has both {kinds[0]} and {kinds[1]}; use all/any to combine")
    kind = kinds[0]
    if kind in ("all", "any"):
        _only(node, {kind}, path)
        items = node[kind]
        if not isinstance(items, list) or not items:
            raise InvalidInput(f"{path}.{kind}", "must be a non-empty list of conditions")
        parsed = tuple(parse_condition(c, f"{path}.{kind}[{i}]") for i, c in enumerate(items))
        return All(parsed) if kind == "all" else AnyOf(parsed)
    if kind == "not":
        _only(node, {"not"}, path)
        return Not(parse_condition(node["not"], f"{path}.not"))
    if kind == "trait":
        return Trait(_prop_test(node, path, "trait"))
    if kind in ("performed", "not_performed"):
        return _performed(node, path, kind == "not_performed")
    if kind in ("first_performed", "last_performed"):
        return _first_last(node, path, "first" if kind == "first_performed" else "last")
    if kind in ("in_segment", "not_in_segment"):
        _only(node, {kind}, path)
        seg = InSegment(_text(node[kind], f"{path}.{kind}"))
        return seg if kind == "in_segment" else Not(seg)
    if kind in ("rfm_layer", "lifecycle_stage"):
        _only(node, {kind, "spec"}, path)
        spec = node.get("spec")
        if not isinstance(spec, Mapping):
            raise InvalidInput(f"{path}.spec", "must be the analysis spec (an object)")
        return Layer(
            "rfm" if kind == "rfm_layer" else "lifecycle",
            _text(node[kind], f"{path}.{kind}"), dict(spec),
        )
    return _bucket(node, path)


def walk(cond: Condition) -> Iterator[Condition]:
    """Every node of the tree, parents before children."""
    yield cond
    if isinstance(cond, All | AnyOf):
        for c in cond.items:
            yield from walk(c)
    elif isinstance(cond, Not):
        yield from walk(cond.item)


def event_leaves(cond: Condition) -> list[Performed | FirstLast]:
    return [c for c in walk(cond) if isinstance(c, Performed | FirstLast)]


def referenced_segments(cond: Condition) -> set[str]:
    return {c.segment for c in walk(cond) if isinstance(c, InSegment)}


@dataclass(frozen=True, slots=True)
class Definition:
    """A dynamic segment as saved: its name, description and condition tree."""

    name: str
    description: str
    conditions: Condition
    document: dict[str, Any]  # the validated input, kept as given for display/export


def parse_definition(doc: Any, *, name: str | None = None) -> Definition:
    """Validate ``{"name", "description", "conditions"}``; ``name`` overrides the document's."""
    if not isinstance(doc, Mapping):
        raise InvalidInput("definition", "must be an object with name and conditions")
    _only(dict(doc), {"name", "description", "conditions"}, "definition")
    raw_name = name if name is not None else doc.get("name")
    if not isinstance(raw_name, str) or not raw_name.strip() or "/" in raw_name:
        raise InvalidInput("name", "must be a non-empty string without '/'")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise InvalidInput("description", "must be a string")
    if "conditions" not in doc:
        raise InvalidInput("conditions", "is required")
    conditions = parse_condition(doc["conditions"], "conditions")
    document = {"name": raw_name, "description": description, "conditions": doc["conditions"]}
    return Definition(raw_name, description, conditions, document)


def load_definition(text: str, *, name: str | None = None) -> Definition:
    """Parse a YAML or JSON document (YAML is a superset of JSON) and validate it."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidInput("definition", f"is not valid YAML or JSON{where}") from None
    return parse_definition(doc, name=name)
