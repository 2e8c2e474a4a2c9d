"""Filters on event and profile properties, evaluated as masks over the cache.

A filter is a condition ``{"property": "channel", "op": "=", "value": "app"}`` (add
``"on": "profile"``, or write the property as ``user.NAME``, for a profile property),
a list of conditions (all must hold), or ``{"and": [...]}`` / ``{"or": [...]}``.

Operators: ``=  !=  >  >=  <  <=  in  not in  contains  regex  is set  is not set``.
Comparisons run once per distinct value of the column (it is dictionary encoded), so
a filter costs one gather over the rows whatever the operator. ``!=`` and ``not in``
hold for rows where the property is unset; ordering operators never do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from ..track.records import NAME_RE
from .cache import EventCache, PropColumn

__all__ = ["OPS", "Cond", "Filter", "Group", "parse_filter", "row_mask", "user_mask"]

OPS = ("=", "!=", ">", ">=", "<", "<=", "in", "not in", "contains", "regex", "is set",
       "is not set")
_NO_VALUE = ("is set", "is not set")
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Cond:
    prop: str
    op: str
    value: Any
    on: str  # "event" | "profile"


@dataclass(frozen=True)
class Group:
    kind: str  # "and" | "or"
    items: tuple[Filter, ...]


Filter = Cond | Group


def _parse_cond(raw: Mapping[str, Any], field: str) -> Cond:
    prop = raw.get("property")
    if not isinstance(prop, str):
        raise InvalidInput(f"{field}.property", "is required and must be a string")
    on = raw.get("on", "event")
    if prop.startswith("user."):
        prop, on = prop[5:], "profile"
    if on not in ("event", "profile"):
        raise InvalidInput(f"{field}.on", "must be event or profile")
    if not NAME_RE.match(prop):
        raise InvalidInput(f"{field}.property", "must be a valid property name")
    op = raw.get("op", "=")
    if op not in OPS:
        raise InvalidInput(f"{field}.op", "must be one of " + ", ".join(OPS))
    value = raw.get("value")
    if op in ("in", "not in"):
        if not isinstance(value, list) or not value:
            raise InvalidInput(f"{field}.value", f"must be a non-empty list for {op}")
    elif op in (">", ">=", "<", "<="):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{field}.value", f"must be a number for {op}")
    elif op in ("contains", "regex"):
        if not isinstance(value, str):
            raise InvalidInput(f"{field}.value", f"must be a string for {op}")
        if op == "regex":
            try:
                re.compile(value)
            except re.error:
                raise InvalidInput(f"{field}.value", "must be a valid regular expression") from None
    elif op not in _NO_VALUE and (value is None or isinstance(value, list | dict)):
        raise InvalidInput(f"{field}.value", f"must be a string, number or boolean for {op}")
    return Cond(prop, op, value, on)


def parse_filter(raw: Any, field: str = "where") -> Filter | None:
    """Validate a filter; ``None`` (or an empty list) means no filter."""
    if raw is None:
        return None
    if isinstance(raw, list):
        items = tuple(f for i, r in enumerate(raw) if (f := parse_filter(r, f"{field}[{i}]")))
        return Group("and", items) if items else None
    if not isinstance(raw, Mapping):
        raise InvalidInput(field, "must be a condition, a list of conditions, or {and|or: [...]}")
    for kind in ("and", "or"):
        if kind in raw:
            sub = raw[kind]
            if not isinstance(sub, list) or not sub:
                raise InvalidInput(f"{field}.{kind}", "must be a non-empty list")
            parts = tuple(f for i, r in enumerate(sub) if (f := parse_filter(r, f"{field}.{kind}[{i}]")))
            return Group(kind, parts)
    return _parse_cond(raw, field)


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _equal_lut(col: PropColumn, value: Any) -> Bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        with np.errstate(invalid="ignore"):
            eq: Bool = col.value_numbers() == float(value)
        return eq
    text = _text(value)
    return np.array([v == text for v in col.values], dtype=bool)


def _value_lut(col: PropColumn, cond: Cond) -> Bool:
    """Per distinct value: does the condition hold? (Unset rows are decided by the caller.)"""
    op, value = cond.op, cond.value
    if op in ("=", "!="):
        return _equal_lut(col, value)
    if op in ("in", "not in"):
        out = np.zeros(len(col.values), dtype=bool)
        for v in value:
            out |= _equal_lut(col, v)
        return out
    if op in (">", ">=", "<", "<="):
        nums = col.value_numbers()
        with np.errstate(invalid="ignore"):
            res: Bool = {">": nums > value, ">=": nums >= value, "<": nums < value,
                         "<=": nums <= value}[op]
        return res
    if op == "contains":
        return np.array([value in v for v in col.values], dtype=bool)
    if op == "regex":
        rx = re.compile(value)
        return np.array([rx.search(v) is not None for v in col.values], dtype=bool)
    return np.ones(len(col.values), dtype=bool)  # is set / is not set


def _column_mask(col: PropColumn, cond: Cond) -> Bool:
    lut = _value_lut(col, cond)
    negate = cond.op in ("!=", "not in", "is not set")
    # The extra slot answers for unset rows: true only for a negated condition.
    full = np.append(lut, False)
    codes = np.where(col.codes < 0, len(col.values), col.codes)
    hit: Bool = full[codes]
    out: Bool = ~hit if negate else hit
    return out


def _eval(cache: EventCache, f: Filter, per_user: bool) -> Bool:
    if isinstance(f, Group):
        size = cache.n_users if per_user else cache.n
        acc = np.ones(size, bool) if f.kind == "and" else np.zeros(size, bool)
        for item in f.items:
            m = _eval(cache, item, per_user)
            acc = acc & m if f.kind == "and" else acc | m
        return acc
    if f.on == "profile":
        um = _column_mask(cache.profile_prop(f.prop), f)
        return um if per_user else um[cache.uidx]
    if per_user:
        raise InvalidInput("where", f"only profile properties may be used here, not {f.prop!r}")
    return _column_mask(cache.prop(f.prop), f)


def row_mask(cache: EventCache, f: Filter | None) -> Bool | None:
    """Rows (events) for which the filter holds; ``None`` when there is no filter."""
    return None if f is None else _eval(cache, f, per_user=False)


def user_mask(cache: EventCache, f: Filter | None) -> Bool | None:
    """Users for which a filter of profile conditions holds; ``None`` when no filter."""
    return None if f is None else _eval(cache, f, per_user=True)
