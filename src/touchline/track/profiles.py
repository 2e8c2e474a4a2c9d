"""Profiles: the six profile operations, reading profiles, and bulk counters.

A profile row holds the properties and counters of one person as the survivor of
its merge tree sees them (a merge copies the loser's properties in where the
survivor has none, and adds up its counters). Readers always go through the
survivor: asking for a merged-away profile id answers with its survivor's view.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..store.batch import IdentityRow, ItemRow, ProfileRow
from ..store.state.base import StateTx
from .records import ID_PRIORITY

__all__ = [
    "PROFILE_OPS",
    "ProfileView",
    "apply_profile_op",
    "insert_profiles",
    "iter_identities",
    "iter_items",
    "iter_profiles",
    "iter_user_map",
    "lookup_profile",
    "profile_rows",
    "profiles_by_ids",
    "touch_profiles",
    "write_properties",
]

PROFILE_OPS = ("set", "set_once", "increment", "append", "unset", "delete")

_CHUNK = 5_000
_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class ProfileView:
    """One person as a reader sees them: the survivor and everything merged into it."""

    user_id: int
    identities: dict[str, list[str]]
    properties: dict[str, Any]
    first_seen_ms: int | None
    last_seen_ms: int | None
    event_count: int
    deleted: bool = False


# -- the six operations ---------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def apply_profile_op(
    properties: dict[str, Any], op: str, values: Mapping[str, Any]
) -> tuple[dict[str, Any], bool, list[tuple[str, str]]]:
    """Apply one operation to a copy of ``properties``.

    Returns (new properties, whether the profile is now deleted, problems as
    (field, rule)). A bad key is skipped and reported; the good keys still apply.
    """
    props = dict(properties)
    problems: list[tuple[str, str]] = []
    if op == "set":
        props.update(values)
    elif op == "set_once":
        for k, v in values.items():
            props.setdefault(k, v)
    elif op == "increment":
        for k, v in values.items():
            if not _is_number(v):
                problems.append((f"properties.{k}", "increment needs a number"))
                continue
            old = props.get(k, 0)
            if not _is_number(old):
                problems.append((f"properties.{k}", "cannot increment a value that is not a number"))
                continue
            props[k] = old + v
    elif op == "append":
        for k, v in values.items():
            items = v if isinstance(v, list) else [v]
            if not all(isinstance(x, str) for x in items):
                problems.append((f"properties.{k}", "append needs a list of strings"))
                continue
            old = props.get(k)
            if old is None:
                old = []
            elif not isinstance(old, list):
                problems.append((f"properties.{k}", "cannot append to a value that is not a list"))
                continue
            # Sensors list properties hold each string once: appending is a set union.
            props[k] = [*old, *(x for x in dict.fromkeys(items) if x not in old)]
    elif op == "unset":
        for k in values:
            props.pop(k, None)
    elif op == "delete":
        return {}, True, problems
    else:
        problems.append(("op", f"unknown profile operation {op!r}; one of {', '.join(PROFILE_OPS)}"))
    return props, False, problems


# -- writes ---------------------------------------------------------------------------


def insert_profiles(
    tx: StateTx,
    rows: Sequence[tuple[int, str, dict[str, Any], int | None, int | None, int, bool]],
) -> None:
    """Insert new profiles: (user_id, project, properties, first, last, count, deleted)."""
    now = tx.now_ms
    tx.insert_many(
        "profiles",
        ("user_id", "project", "parent", "survivor", "merges", "properties", "first_seen_ms",
         "last_seen_ms", "event_count", "deleted", "created_ms"),
        [(uid, project, None, uid, 0, "{}" if not props else orjson.dumps(props).decode(), f,
          last, n, int(d), now) for uid, project, props, f, last, n, d in rows],
    )


def write_properties(tx: StateTx, rows: Iterable[tuple[int, dict[str, Any], bool]]) -> None:
    """Store (user_id, properties, deleted) for existing profiles."""
    tx.executemany(
        "UPDATE profiles SET properties = ?, deleted = ? WHERE user_id = ?",
        [(orjson.dumps(p).decode(), int(d), uid) for uid, p, d in rows],
    )


def _touch(tx: StateTx, stats: Sequence[tuple[int, int, int, int]]) -> None:
    cols = [("id", "bigint"), ("n", "bigint"), ("f", "bigint"), ("l", "bigint")]
    for start in range(0, len(stats), _CHUNK):
        src, params = tx.rows_source(cols, stats[start:start + _CHUNK])
        tx.execute(
            "UPDATE profiles SET event_count = profiles.event_count + v.n, "
            "first_seen_ms = CASE WHEN profiles.first_seen_ms IS NULL "
            "OR profiles.first_seen_ms > v.f THEN v.f ELSE profiles.first_seen_ms END, "
            "last_seen_ms = CASE WHEN profiles.last_seen_ms IS NULL "
            "OR profiles.last_seen_ms < v.l THEN v.l ELSE profiles.last_seen_ms END "
            f"FROM {src} AS v WHERE profiles.user_id = v.id",
            params,
        )


def touch_profiles(
    tx: StateTx, project: str, stats: Iterable[tuple[int, int, int, int]]
) -> None:
    """Add events to many profiles at once: rows of (user_id, event_count, first_ms,
    last_ms). Ids of merged-away profiles count for their survivor."""
    rows = list(stats)
    if not rows:
        return
    survivor = _survivors(tx, project, [r[0] for r in rows])
    agg: dict[int, list[int]] = {}
    for uid, n, first, last in rows:
        s = survivor.get(uid)
        if s is None:
            continue  # not a profile of this project: nothing to count
        a = agg.get(s)
        if a is None:
            agg[s] = [n, first, last]
        else:
            a[0] += n
            a[1] = min(a[1], first)
            a[2] = max(a[2], last)
    # In id order, the updates walk the profiles table's key in order: far fewer
    # page misses once it outgrows the page cache.
    _touch(tx, [(s, a[0], a[1], a[2]) for s, a in sorted(agg.items())])


def _survivors(tx: StateTx, project: str, ids: Sequence[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    uniq = list(dict.fromkeys(ids))
    for start in range(0, len(uniq), _CHUNK):
        src, params = tx.rows_source([("id", "bigint")], [(i,) for i in uniq[start:start + _CHUNK]])
        for uid, s in tx.fetchall(
            f"SELECT p.user_id, p.survivor FROM {src} AS k CROSS JOIN profiles p "
            "WHERE p.user_id = k.id AND p.project = ?",
            [*params, project],
        ):
            out[int(uid)] = int(s)
    return out


# -- reads ----------------------------------------------------------------------------


def profile_rows(tx: StateTx, ids: Sequence[int]) -> list[ProfileRow]:
    """The stored rows of ``ids`` as the ingest batch carries them."""
    out: list[ProfileRow] = []
    uniq = list(dict.fromkeys(ids))
    for start in range(0, len(uniq), _CHUNK):
        src, params = tx.rows_source([("id", "bigint")], [(i,) for i in uniq[start:start + _CHUNK]])
        for uid, project, props, first, last, n, deleted, survivor in tx.fetchall(
            "SELECT p.user_id, p.project, p.properties, p.first_seen_ms, p.last_seen_ms, "
            f"p.event_count, p.deleted, p.survivor FROM {src} AS k "
            "CROSS JOIN profiles p WHERE p.user_id = k.id",
            params,
        ):
            # A merged-away profile is no longer a person of its own in the replica.
            gone = bool(deleted) or int(survivor) != int(uid)
            out.append(ProfileRow(
                project=project, user_id=int(uid), properties=orjson.loads(props),
                first_seen_ms=first, last_seen_ms=last, event_count=int(n), deleted=gone,
            ))
    return out


def _views(tx: StateTx, project: str, survivors: Sequence[int]) -> dict[int, ProfileView]:
    idents: dict[int, dict[str, list[str]]] = {s: {} for s in survivors}
    views: dict[int, ProfileView] = {}
    for start in range(0, len(survivors), _CHUNK):
        part = list(survivors[start:start + _CHUNK])
        src, params = tx.rows_source([("id", "bigint")], [(i,) for i in part])
        for s, id_type, id_value in tx.fetchall(
            f"SELECT p.survivor, i.id_type, i.id_value FROM {src} AS k "
            "CROSS JOIN profiles p JOIN identities i ON i.user_id = p.user_id "
            "WHERE p.survivor = k.id ORDER BY i.id_type, i.id_value",
            params,
        ):
            idents[int(s)].setdefault(id_type, []).append(id_value)
        for uid, props, first, last, n, deleted in tx.fetchall(
            "SELECT p.user_id, p.properties, p.first_seen_ms, p.last_seen_ms, p.event_count, "
            f"p.deleted FROM {src} AS k CROSS JOIN profiles p "
            "WHERE p.user_id = k.id AND p.project = ?",
            [*params, project],
        ):
            views[int(uid)] = ProfileView(
                user_id=int(uid), identities=idents[int(uid)], properties=orjson.loads(props),
                first_seen_ms=first, last_seen_ms=last, event_count=int(n), deleted=bool(deleted),
            )
    return views


def profiles_by_ids(tx: StateTx, project: str, ids: Iterable[int]) -> dict[int, ProfileView]:
    """The view of each requested profile id that exists in ``project``, keyed by the
    requested id (a merged-away id answers with its survivor's view)."""
    survivor = _survivors(tx, project, list(ids))
    views = _views(tx, project, list(dict.fromkeys(survivor.values())))
    return {uid: views[s] for uid, s in survivor.items() if s in views}


def lookup_profile(tx: StateTx, project: str, identity: str) -> ProfileView | None:
    """The profile holding ``identity``: "type:value", or a bare value searched across
    types, most trusted type (login_id) first."""
    id_type, sep, value = identity.partition(":")
    if sep and id_type and value:
        row = tx.fetchone(
            "SELECT p.survivor FROM identities i JOIN profiles p ON p.user_id = i.user_id "
            "WHERE i.project = ? AND i.id_type = ? AND i.id_value = ?",
            (project, id_type, value),
        )
        if row is not None:
            return _views(tx, project, [int(row[0])]).get(int(row[0]))
    rows = tx.fetchall(
        "SELECT i.id_type, p.survivor FROM identities i JOIN profiles p ON p.user_id = i.user_id "
        "WHERE i.project = ? AND i.id_value = ?",
        (project, identity),
    )
    if not rows:
        return None
    rank = {t: n for n, t in enumerate(ID_PRIORITY)}
    _, survivor = min(rows, key=lambda r: (rank.get(r[0], len(rank)), r[0]))
    return _views(tx, project, [int(survivor)]).get(int(survivor))


# -- full scans, for rebuilding the event store's replica --------------------------------


def iter_profiles(tx: StateTx, project: str) -> Iterator[ProfileRow]:
    """Every live person (survivor, not deleted) of ``project``, by user id."""
    after = -1
    while True:
        rows = tx.fetchall(
            "SELECT user_id, properties, first_seen_ms, last_seen_ms, event_count FROM profiles "
            "WHERE project = ? AND user_id > ? AND user_id = survivor AND deleted = 0 "
            "ORDER BY user_id LIMIT ?",
            (project, after, _PAGE),
        )
        for uid, props, first, last, n in rows:
            yield ProfileRow(project=project, user_id=int(uid), properties=orjson.loads(props),
                             first_seen_ms=first, last_seen_ms=last, event_count=int(n))
        if len(rows) < _PAGE:
            return
        after = int(rows[-1][0])


def iter_identities(tx: StateTx, project: str) -> Iterator[IdentityRow]:
    """Every identity of ``project`` with the person (survivor) it belongs to."""
    after: tuple[str, str] = ("", "")
    while True:
        rows = tx.fetchall(
            "SELECT i.id_type, i.id_value, p.survivor FROM identities i "
            "JOIN profiles p ON p.user_id = i.user_id WHERE i.project = ? "
            # A row value, not "a > ? OR (a = ? AND b > ?)": both stores seek the
            # primary key to it, where the OR form scanned from the start each page.
            "AND (i.id_type, i.id_value) > (?, ?) "
            "ORDER BY i.id_type, i.id_value LIMIT ?",
            (project, after[0], after[1], _PAGE),
        )
        for t, v, s in rows:
            yield IdentityRow(project=project, id_type=t, id_value=v, user_id=int(s))
        if len(rows) < _PAGE:
            return
        after = (rows[-1][0], rows[-1][1])


def iter_items(tx: StateTx, project: str) -> Iterator[ItemRow]:
    after: tuple[str, str] = ("", "")
    while True:
        rows = tx.fetchall(
            "SELECT item_type, item_id, properties, updated_ms FROM items WHERE project = ? "
            "AND (item_type, item_id) > (?, ?) "
            "ORDER BY item_type, item_id LIMIT ?",
            (project, after[0], after[1], _PAGE),
        )
        for t, i, props, updated in rows:
            yield ItemRow(project=project, item_type=t, item_id=i,
                          properties=orjson.loads(props), updated_ms=int(updated))
        if len(rows) < _PAGE:
            return
        after = (rows[-1][0], rows[-1][1])


def iter_user_map(tx: StateTx, project: str) -> Iterator[tuple[int, int]]:
    """(profile, survivor) for every merged-away profile of ``project``."""
    for uid, s in tx.fetchall(
        "SELECT user_id, survivor FROM profiles WHERE project = ? AND user_id <> survivor "
        "ORDER BY user_id",
        (project,),
    ):
        yield int(uid), int(s)
