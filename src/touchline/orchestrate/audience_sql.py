"""Compile audience conditions to SQL over the event store's views.

The views (per project) are ``events(user_id, event, time, properties JSON, ...)``
and ``profiles(user_id, properties JSON, ...)``. Every condition becomes a boolean
expression over one profile row ``p`` (never NULL: a leaf that cannot be decided
is false), so ``and``/``or``/``not`` compose with plain SQL logic. Queries are
built as sqlglot expressions and rendered for the event store's dialect.

Evaluation is always *as of* a time ``at_ms``: an event counts only once its own
time has come, and relative windows end at ``at_ms``. The same inputs give the
same answer for batch computation, real-time updates and boundary flips.

Other segments and analysis layers are resolved before compiling
(:func:`expand`): a dynamic segment's conditions are inlined, so a segment built
on another stays current with it; a static segment or an analysis layer becomes
its list of user ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import xxhash
from sqlglot import exp

from ..errors import InvalidInput, NotFound
from .audience_model import (
    All,
    AnyOf,
    Bucket,
    Condition,
    FirstLast,
    InSegment,
    Layer,
    Not,
    Performed,
    PropTest,
    Trait,
)

__all__ = [
    "Expanded",
    "Resolver",
    "UserSet",
    "boundary_sql",
    "bucket_of",
    "count_sql",
    "expand",
    "in_users",
    "membership_sql",
    "sample_sql",
    "walk_expanded",
]

_U32 = 1 << 32
_NUMBER_TYPES = ("BIGINT", "UBIGINT", "DOUBLE")


@dataclass(frozen=True, slots=True)
class UserSet:
    """A fixed set of users (a static segment or an analysis layer), resolved."""

    label: str
    users: frozenset[int]


class Resolver(Protocol):
    def segment(self, name: str) -> Condition | frozenset[int]:
        """A dynamic segment's conditions, or a static segment's members."""
        ...

    def layer(self, layer: Layer) -> frozenset[int]:
        """Users in an RFM layer or lifecycle stage (raise InvalidInput if unknown)."""
        ...


Expanded = Condition | UserSet


def expand(cond: Condition, resolver: Resolver, path: str = "conditions",
           _seen: tuple[str, ...] = ()) -> Expanded:
    """Replace segment references and layers by what they stand for."""
    if isinstance(cond, InSegment):
        if cond.segment in _seen:
            chain = " -> ".join((*_seen, cond.segment))
            raise InvalidInput(path, f"segments refer to each other in a cycle: {chain}")
        try:
            target = resolver.segment(cond.segment)
        except NotFound:
            raise InvalidInput(path, f"no segment named {cond.segment!r}") from None
        if isinstance(target, frozenset):
            return UserSet(f"segment {cond.segment}", target)
        return expand(target, resolver, path, (*_seen, cond.segment))
    if isinstance(cond, Layer):
        return UserSet(f"{cond.kind} {cond.name}", resolver.layer(cond))
    if isinstance(cond, All | AnyOf):
        kind = "all" if isinstance(cond, All) else "any"
        items = tuple(
            expand(c, resolver, f"{path}.{kind}[{i}]", _seen) for i, c in enumerate(cond.items)
        )
        return All(items) if isinstance(cond, All) else AnyOf(items)  # type: ignore[arg-type]
    if isinstance(cond, Not):
        return Not(expand(cond.item, resolver, f"{path}.not", _seen))  # type: ignore[arg-type]
    return cond


# ---------------------------------------------------------------- expressions

def _ts(ms: int) -> exp.Expr:
    text = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return exp.cast(exp.Literal.string(text), "TIMESTAMP")


def _fn(name: str, *args: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this=name, expressions=list(args))


def _path(prop: str) -> exp.Expr:
    return exp.Literal.string(f'$."{prop}"')


def _lit(value: str | int | float | bool) -> exp.Expr:
    if isinstance(value, bool):
        return exp.Literal.string("true" if value else "false")
    if isinstance(value, str):
        return exp.Literal.string(value)
    return exp.Literal.number(repr(float(value)))


def _coalesce_false(e: exp.Expr) -> exp.Expr:
    return exp.Coalesce(this=exp.Paren(this=e), expressions=[exp.false()])


def _json_type(col: exp.Expr, prop: str) -> exp.Expr:
    return _fn("json_type", col, _path(prop))


def _number(col: exp.Expr, prop: str) -> exp.Expr:
    """The property as DOUBLE when it is a JSON number, else NULL."""
    is_number = exp.In(this=_json_type(col, prop),
                       expressions=[exp.Literal.string(t) for t in _NUMBER_TYPES])
    value = exp.TryCast(this=_fn("json_extract_string", col, _path(prop)),
                        to=exp.DataType.build("DOUBLE"))
    return exp.Case(ifs=[exp.If(this=is_number, true=value)])


def _compare(op: str, left: exp.Expr, right: exp.Expr) -> exp.Expr:
    cls = {"=": exp.EQ, ">": exp.GT, ">=": exp.GTE, "<": exp.LT, "<=": exp.LTE}[op]
    return cls(this=left, expression=right)


def _equals(col: exp.Expr, prop: str, value: str | int | float | bool) -> exp.Expr:
    return _typed_compare(col, prop, "=", value)


def _typed_compare(col: exp.Expr, prop: str, op: str,
                   value: str | int | float | bool) -> exp.Expr:
    if isinstance(value, bool):
        typed = exp.EQ(this=_json_type(col, prop), expression=exp.Literal.string("BOOLEAN"))
        left = _fn("json_extract_string", col, _path(prop))
        return exp.and_(typed, _compare(op, left, _lit(value)))
    if isinstance(value, str):
        typed = exp.EQ(this=_json_type(col, prop), expression=exp.Literal.string("VARCHAR"))
        left = _fn("json_extract_string", col, _path(prop))
        return exp.and_(typed, _compare(op, left, _lit(value)))
    return _compare(op, _number(col, prop), _lit(value))


def prop_test(col: exp.Expr, t: PropTest) -> exp.Expr:
    """A property test over a JSON column, never NULL."""
    op, value, prop = t.op, t.value, t.prop
    if op in ("!=", "not_in", "not_contains", "not_set"):
        positive = {"!=": "=", "not_in": "in", "not_contains": "contains", "not_set": "is_set"}[op]
        return exp.not_(prop_test(col, PropTest(prop, positive, value)))
    if op == "is_set":
        jt = _json_type(col, prop)
        pred: exp.Expr = exp.and_(
            exp.Not(this=exp.Is(this=jt, expression=exp.null())),
            exp.NEQ(this=jt.copy(), expression=exp.Literal.string("NULL")),
        )
    elif op == "in":
        assert isinstance(value, tuple)
        pred = exp.or_(*(exp.Paren(this=_equals(col, prop, v)) for v in value))
    elif op == "contains":
        assert isinstance(value, str)
        as_text = exp.and_(
            exp.EQ(this=_json_type(col, prop), expression=exp.Literal.string("VARCHAR")),
            _fn("contains", _fn("json_extract_string", col, _path(prop)), _lit(value)),
        )
        in_array = exp.and_(
            exp.EQ(this=_json_type(col, prop), expression=exp.Literal.string("ARRAY")),
            _fn("list_contains",
                _fn("json_extract_string", col, exp.Literal.string(f'$."{prop}"[*]')),
                _lit(value)),
        )
        pred = exp.or_(exp.Paren(this=as_text), exp.Paren(this=in_array))
    else:
        assert value is not None and not isinstance(value, tuple)
        pred = _typed_compare(col, prop, op, value)
    return _coalesce_false(pred)


def _event_filter(leaf: Performed | FirstLast, user: exp.Expr | None) -> list[exp.Expr]:
    props = exp.column("properties", "e")
    out: list[exp.Expr] = []
    if user is not None:
        out.append(exp.EQ(this=exp.column("user_id", "e"), expression=user))
    out.append(exp.EQ(this=exp.column("event", "e"), expression=exp.Literal.string(leaf.event)))
    out.extend(prop_test(props, t) for t in leaf.where)
    return out


def _subquery(select: exp.Expr, filters: list[exp.Expr]) -> exp.Expr:
    query = exp.select(select).from_(exp.table_("events", alias="e")).where(exp.and_(*filters))
    return exp.Subquery(this=query)


def _only_users(filters: list[exp.Expr], users: Sequence[int] | None) -> list[exp.Expr]:
    # Repeating the user filter inside each correlated subquery lets the engine
    # scan only those users' events instead of decorrelating over all events.
    if users is not None:
        filters.insert(0, in_users(exp.column("user_id", "e"), users))
    return filters


def _performed(leaf: Performed, at_ms: int, users: Sequence[int] | None) -> exp.Expr:
    time = exp.column("time", "e")
    filters = _only_users(_event_filter(leaf, exp.column("user_id", "p")), users)
    filters.append(exp.LTE(this=time, expression=_ts(at_ms)))
    w = leaf.window
    if w.last_ms is not None:
        filters.append(exp.GT(this=time.copy(), expression=_ts(at_ms - w.last_ms)))
    if w.start_ms is not None:
        filters.append(exp.GTE(this=time.copy(), expression=_ts(w.start_ms)))
    if w.end_ms is not None:
        filters.append(exp.LT(this=time.copy(), expression=_ts(w.end_ms)))
    if leaf.aggregate == "count":
        agg: exp.Expr = exp.Count(this=exp.Star())
    else:
        assert leaf.prop is not None
        cls = {"sum": exp.Sum, "avg": exp.Avg, "min": exp.Min, "max": exp.Max}[leaf.aggregate]
        agg = cls(this=_number(exp.column("properties", "e"), leaf.prop))
    value = _subquery(agg, filters)
    if leaf.aggregate in ("count", "sum"):
        # No events means a count or a sum of zero, which "= 0" or "<= 2" must see.
        value = exp.Coalesce(this=value, expressions=[exp.Literal.number(0)])
    nums = [exp.Literal.number(repr(v)) for v in leaf.value]
    if leaf.op == "between":
        pred: exp.Expr = exp.Between(this=value, low=nums[0], high=nums[1])
    elif leaf.op == "!=":
        pred = exp.NEQ(this=value, expression=nums[0])
    else:
        pred = _compare(leaf.op, value, nums[0])
    return _coalesce_false(pred)


def _first_last(leaf: FirstLast, at_ms: int, users: Sequence[int] | None) -> exp.Expr:
    time = exp.column("time", "e")
    filters = _only_users(_event_filter(leaf, exp.column("user_id", "p")), users)
    filters.append(exp.LTE(this=time, expression=_ts(at_ms)))
    agg = exp.Min(this=time.copy()) if leaf.which == "first" else exp.Max(this=time.copy())
    value = _subquery(agg, filters)
    if leaf.when == "within":
        pred: exp.Expr = exp.GT(this=value, expression=_ts(at_ms - leaf.ms))
    elif leaf.when == "more_than":
        pred = exp.LTE(this=value, expression=_ts(at_ms - leaf.ms))
    elif leaf.when == "before":
        pred = exp.LT(this=value, expression=_ts(leaf.ms))
    else:
        pred = exp.GTE(this=value, expression=_ts(leaf.ms))
    return _coalesce_false(pred)


def _bucket_keys(salt: str) -> tuple[int, int]:
    """Multiplier and offset of a salt; the multiplier is odd and below 2^31, so
    (u mod 2^32) * multiplier fits a signed 64-bit integer in any SQL engine."""
    digest = xxhash.xxh64_intdigest(salt.encode())
    return (digest & 0x7FFFFFFF) | 1, digest >> 32


def bucket_of(user_id: int, salt: str) -> int:
    """The stable bucket (0..99) of a user for a salt; the SQL computes the same.

    Multiplicative hashing: the high bits of ``u * a + b mod 2^32`` spread
    consecutive ids evenly, and a salt-dependent multiplier makes the buckets of
    two salts independent of each other.
    """
    a, b = _bucket_keys(salt)
    x = ((user_id % _U32) * a + b) % _U32
    # Scale the top 16 bits to 0..99 rather than taking them modulo 100: the
    # high bits are the well-mixed ones.
    return ((x >> 16) * 100) >> 16


def _bucket(leaf: Bucket) -> exp.Expr:
    a, b = _bucket_keys(leaf.salt)
    u32 = exp.Literal.number(_U32)
    # ((u % 2^32) + 2^32) % 2^32 makes a negative id non-negative, as Python's % does.
    u = exp.Mod(
        this=exp.Paren(this=exp.Add(
            this=exp.Paren(this=exp.Mod(this=exp.column("user_id", "p"), expression=u32)),
            expression=u32.copy())),
        expression=u32.copy(),
    )
    x = exp.Mod(
        this=exp.Paren(this=exp.Add(
            this=exp.Mul(this=exp.Paren(this=u), expression=exp.Literal.number(a)),
            expression=exp.Literal.number(b))),
        expression=u32.copy(),
    )
    top = exp.Paren(this=exp.BitwiseRightShift(this=exp.Paren(this=x),
                                               expression=exp.Literal.number(16)))
    bucket = exp.BitwiseRightShift(
        this=exp.Paren(this=exp.Mul(this=top, expression=exp.Literal.number(100))),
        expression=exp.Literal.number(16),
    )
    return exp.Between(this=bucket, low=exp.Literal.number(leaf.start),
                       high=exp.Literal.number(leaf.end - 1))


def in_users(col: exp.Expr, users: Iterable[int]) -> exp.Expr:
    ids = sorted(set(users))
    if not ids:
        return exp.false()
    return exp.In(this=col, expressions=[exp.Literal.number(u) for u in ids])


def predicate(cond: Expanded, at_ms: int, users: Sequence[int] | None = None) -> exp.Expr:
    """The boolean expression over profile row ``p`` for a resolved condition
    (``users``: the rows are known to be among these users)."""
    if isinstance(cond, All):
        return exp.and_(*(exp.Paren(this=predicate(c, at_ms, users)) for c in cond.items))
    if isinstance(cond, AnyOf):
        return exp.or_(*(exp.Paren(this=predicate(c, at_ms, users)) for c in cond.items))
    if isinstance(cond, Not):
        return exp.not_(exp.Paren(this=predicate(cond.item, at_ms, users)))
    if isinstance(cond, Trait):
        return prop_test(exp.column("properties", "p"), cond.test)
    if isinstance(cond, Performed):
        return _performed(cond, at_ms, users)
    if isinstance(cond, FirstLast):
        return _first_last(cond, at_ms, users)
    if isinstance(cond, Bucket):
        return _bucket(cond)
    if isinstance(cond, UserSet):
        return in_users(exp.column("user_id", "p"), cond.users)
    raise TypeError(f"unresolved condition {cond!r}; call expand() first")


def _membership(cond: Expanded, at_ms: int, users: Sequence[int] | None) -> exp.Select:
    where = predicate(cond, at_ms, users)
    if users is not None:
        where = exp.and_(in_users(exp.column("user_id", "p"), users), exp.Paren(this=where))
    return exp.select(exp.column("user_id", "p")).from_(
        exp.table_("profiles", alias="p")).where(where)


def membership_sql(cond: Expanded, at_ms: int, users: Sequence[int] | None = None,
                   dialect: str = "duckdb") -> str:
    """SELECT the user_id of every member as of ``at_ms`` (of ``users`` if given)."""
    return _membership(cond, at_ms, users).sql(dialect)


def count_sql(cond: Expanded, at_ms: int, dialect: str = "duckdb") -> str:
    inner = _membership(cond, at_ms, None).subquery("m")
    return exp.select(exp.Count(this=exp.Star())).from_(inner).sql(dialect)


def sample_sql(cond: Expanded, at_ms: int, limit: int, dialect: str = "duckdb") -> str:
    inner = _membership(cond, at_ms, None).subquery("m")
    return (exp.select(exp.column("user_id", "m")).from_(inner)
            .order_by(exp.column("user_id", "m")).limit(limit).sql(dialect))


def walk_expanded(cond: Expanded) -> Iterator[Expanded]:
    """Every node of a resolved tree, parents before children."""
    yield cond
    if isinstance(cond, All | AnyOf):
        for c in cond.items:
            yield from walk_expanded(c)
    elif isinstance(cond, Not):
        yield from walk_expanded(cond.item)


def _leaves(cond: Expanded) -> list[Performed | FirstLast]:
    return [c for c in walk_expanded(cond) if isinstance(c, Performed | FirstLast)]


def _duration(leaf: Performed | FirstLast) -> int | None:
    if isinstance(leaf, Performed):
        return leaf.window.last_ms
    return leaf.ms if leaf.when in ("within", "more_than") else None


def _boundaries(cond: Expanded, at_ms: int, users: Sequence[int] | None) -> exp.Select | None:
    parts: list[exp.Select] = []
    epoch = _fn("epoch_ms", exp.column("time", "e"))
    for leaf in _leaves(cond):
        offsets = [0]
        duration = _duration(leaf)
        if duration is not None:
            offsets.append(duration)
        for offset in offsets:
            candidate = epoch.copy() if offset == 0 else exp.Add(
                this=epoch.copy(), expression=exp.Literal.number(offset))
            filters = _only_users(_event_filter(leaf, None), users)
            filters.append(exp.GT(this=candidate.copy(), expression=exp.Literal.number(at_ms)))
            parts.append(
                exp.select(exp.column("user_id", "e").as_("user_id"), candidate.as_("due"))
                .from_(exp.table_("events", alias="e")).where(exp.and_(*filters))
            )
    if not parts:
        return None
    union: exp.Expr = parts[0]
    for part in parts[1:]:
        union = exp.union(union, part, distinct=False)
    return (
        exp.select(exp.column("user_id", "b").as_("user_id"),
                   exp.Min(this=exp.column("due", "b")).as_("due"))
        .from_(exp.Subquery(this=union, alias=exp.TableAlias(this=exp.to_identifier("b"))))
        .group_by(exp.column("user_id", "b"))
    )


def boundary_sql(cond: Expanded, at_ms: int, users: Sequence[int] | None = None,
                 dialect: str = "duckdb") -> str | None:
    """SELECT (user_id, due_ms): the next time after ``at_ms`` a user's membership
    can change with no new event, or None when nothing in ``cond`` depends on time.

    Membership can only change when an event's own time comes (it starts to count)
    or when it leaves a relative window (time + duration). Listing both for every
    matching event is a superset of the real flips: an extra wake-up re-evaluates
    and finds nothing changed, a missed one would be a wrong membership.
    """
    query = _boundaries(cond, at_ms, users)
    return None if query is None else query.sql(dialect)
