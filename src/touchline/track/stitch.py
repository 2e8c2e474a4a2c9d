"""Identity stitching: a batch of records in, the profile of each record out.

:func:`apply_records` applies a batch in order inside the caller's state-store
transaction. The rules (see the protocols reference):

- identities are typed; the first identity of a record is its primary one, and a
  record resolves to the profile of its primary identity (created when unknown);
- identities are linked only by explicit links (``record.link`` or kind "link");
- junk ids (``records.is_junk_id`` plus the policy's list) never reach the graph;
- two profiles holding different login ids are never merged: that link is dropped
  and reported, and the record stays with its primary identity's profile;
- a profile holds at most ``max_identities_per_type`` identities of one type and
  absorbs at most ``max_merges_per_profile`` other profiles;
- merges keep the oldest profile (the smallest id) and are logged, so an unbind of
  an identity that came with a merge splits that profile off again.

Every record's profile id is its primary identity's person when the batch ends, so
:func:`resolve_records`, which answers the same question read-only after a crash
between the two stores' commits, returns the same ids.

Plain track events of known people are the hot path: their identity is a cached
dict lookup and their counters are added up per profile and written once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from ..store.batch import IdentityRow, ItemRow, StateOutcome
from ..store.state.base import StateTx
from .identity import (
    PROFILE_SEQUENCE,
    IdentityKey,
    TxIdentities,
    attach_identities,
    detach_identity,
    ensure_profiles,
    group_facts,
    group_members,
    home_of,
    last_owners,
    merge_profiles,
    split_profile,
    tx_identities,
)
from .profiles import (
    ProfileView,
    apply_profile_op,
    insert_profiles,
    iter_identities,
    iter_items,
    iter_profiles,
    iter_user_map,
    lookup_profile,
    profile_rows,
    profiles_by_ids,
    touch_profiles,
    write_properties,
)
from .profiles import _touch as _touch_rows
from .records import Record, is_junk_id

__all__ = [
    "ProfileView",
    "StitchPolicy",
    "apply_records",
    "ensure_profiles",
    "iter_identities",
    "iter_items",
    "iter_profiles",
    "iter_user_map",
    "lookup_profile",
    "profiles_by_ids",
    "resolve_records",
    "touch_profiles",
]

@dataclass(frozen=True, slots=True)
class StitchPolicy:
    """The limits of the identity graph (from settings)."""

    max_identities_per_type: int = 20
    max_merges_per_profile: int = 50
    extra_junk_ids: frozenset[str] = frozenset()
    # Types two profiles may never disagree on: they are never merged.
    unique_types: tuple[str, ...] = ("login_id",)

    @classmethod
    def from_settings(cls, settings: Any) -> StitchPolicy:
        return cls(
            max_identities_per_type=int(settings.max_identities_per_type),
            max_merges_per_profile=int(settings.max_merges_per_profile),
            extra_junk_ids=frozenset(
                v.strip().lower() for v in str(settings.junk_ids).split(",") if v.strip()
            ),
        )


def _clean_keys(
    r: Record, index: int, policy: StitchPolicy, errors: list[tuple[int, InvalidInput]]
) -> list[IdentityKey]:
    """The record's usable identities, most specific first; junk ones are reported."""
    keys: list[IdentityKey] = []
    extra = policy.extra_junk_ids
    for id_type, value in r.identities.items():
        if not isinstance(value, str) or is_junk_id(value, extra):
            errors.append((index, InvalidInput(f"identities.{id_type}", "junk id refused",
                                               index=index)))
            continue
        keys.append((r.project, id_type, value))
    return keys


class _Batch:
    """The state of one :func:`apply_records` call: what is resolved, what is pending."""

    def __init__(self, tx: StateTx, policy: StitchPolicy) -> None:
        self.tx = tx
        self.policy = policy
        self.overlay: TxIdentities = tx_identities(tx)
        self.resolved: dict[IdentityKey, int] = {}
        self.errors: list[tuple[int, InvalidInput]] = []
        # New profiles not yet inserted: id -> [project, props, first, last, count, deleted].
        self.new_profiles: dict[int, list[Any]] = {}
        self.new_idents: list[tuple[str, str, str, int]] = []
        self.touch: dict[int, list[int]] = {}  # inserted profiles: [count, first, last]
        self.props: dict[int, tuple[dict[str, Any], bool]] = {}
        self.dirty: set[int] = set()
        self.touched: set[int] = set()
        self.regrouped: set[int] = set()
        self.user_map: dict[tuple[str, int], int] = {}
        self.ident_rows: dict[IdentityKey, IdentityRow] = {}
        self.items: dict[tuple[str, str, str], ItemRow] = {}
        self._next_id = 0
        self._last_id = -1
        self.graph_changed = False

    # -- ids and lookups ---------------------------------------------------------------

    def reserve(self, count: int) -> None:
        if count > 0:
            self._next_id = self.tx.allocate_ids(PROFILE_SEQUENCE, count)
            self._last_id = self._next_id + count - 1

    def new_id(self) -> int:
        if self._next_id > self._last_id:
            self.reserve(64)
        pid = self._next_id
        self._next_id += 1
        return pid

    def owner(self, key: IdentityKey) -> int | None:
        pid = self.resolved.get(key)
        return None if pid is None else self.overlay.follow(pid)

    def refresh(self) -> None:
        """Re-read every resolved key (after a split moved survivors)."""
        self.resolved = self.overlay.resolve(self.tx, list(self.resolved))

    # -- pending writes ------------------------------------------------------------------

    def create(self, key: IdentityKey) -> int:
        pid = self.new_id()
        self.new_profiles[pid] = [key[0], {}, None, None, 0, False]
        self.new_idents.append((*key, pid))
        self.resolved[key] = pid
        self.touched.add(pid)
        return pid

    def attach(self, key: IdentityKey, pid: int) -> None:
        self.new_idents.append((*key, pid))
        self.resolved[key] = pid
        self.ident_rows.pop(key, None)

    def count(self, pid: int, t: int) -> None:
        new = self.new_profiles.get(pid)
        if new is not None:
            new[4] += 1
            new[2] = t if new[2] is None or t < new[2] else new[2]
            new[3] = t if new[3] is None or t > new[3] else new[3]
            return
        a = self.touch.get(pid)
        if a is None:
            self.touch[pid] = [1, t, t]
            self.touched.add(pid)
        else:
            a[0] += 1
            if t < a[1]:
                a[1] = t
            elif t > a[2]:
                a[2] = t

    def get_props(self, pid: int) -> tuple[dict[str, Any], bool]:
        new = self.new_profiles.get(pid)
        if new is not None:
            return new[1], new[5]
        cached = self.props.get(pid)
        if cached is None:
            self.load_props([pid])
            cached = self.props[pid]
        return cached

    def load_props(self, ids: Sequence[int]) -> None:
        want = [i for i in dict.fromkeys(ids) if i not in self.props and i not in self.new_profiles]
        for row in profile_rows(self.tx, want):
            self.props[row.user_id] = (row.properties, row.deleted and row.properties == {})

    def set_props(self, pid: int, props: dict[str, Any], deleted: bool) -> None:
        new = self.new_profiles.get(pid)
        if new is not None:
            new[1], new[5] = props, deleted
        else:
            self.props[pid] = (props, deleted)
            self.dirty.add(pid)
        self.touched.add(pid)

    def flush_graph(self) -> None:
        """Insert pending profiles and identities (their counters so far included)."""
        if self.new_profiles:
            insert_profiles(self.tx, [(pid, *v) for pid, v in self.new_profiles.items()])
            for pid, spec in self.new_profiles.items():
                self.props[pid] = (spec[1], spec[5])
            self.new_profiles.clear()
        if self.new_idents:
            attach_identities(self.tx, self.new_idents)
            for project, t, v, pid in self.new_idents:
                key = (project, t, v)
                self.ident_rows[key] = IdentityRow(project, t, v, pid)
            self.new_idents.clear()

    def flush(self) -> None:
        """Write everything pending: the database is then current."""
        self.flush_graph()
        if self.touch:
            _touch_rows(self.tx, [(pid, a[0], a[1], a[2]) for pid, a in self.touch.items()])
            self.touch.clear()
        if self.dirty:
            write_properties(self.tx, [(pid, *self.props[pid]) for pid in self.dirty])
            self.dirty.clear()

    # -- links -----------------------------------------------------------------------------

    def refuse(self, index: int, field: str, rule: str) -> None:
        self.errors.append((index, InvalidInput(field, rule, index=index)))

    def link(self, index: int, r: Record, keys: list[IdentityKey]) -> int:
        owners = [self.owner(k) for k in keys]
        first = owners[0]
        if first is not None and owners.count(first) == len(owners):
            # Every identity already belongs to one person (a JS SDK event after login
            # carries its login and cookie ids every time): nothing to merge or attach,
            # and no need to make the database current for the rule checks below.
            return first
        known = [(k, pid) for k, pid in zip(keys, owners, strict=True) if pid is not None]
        if not known:
            return self._link_new(index, keys)
        self.flush()
        target = known[0][1]
        for key, _ in known[1:]:
            q = self.owner(key)
            target = self.overlay.follow(target)
            if q is None or q == target:
                continue
            target = self._try_merge(index, r, key, target, q)
        primary_pid: int | None = self.owner(keys[0])
        for key in keys:
            if key in self.resolved:
                continue
            target = self.overlay.follow(target)
            if self._may_attach(index, key, target):
                self.attach(key, target)
                self.flush_graph()
            elif key == keys[0]:
                # The primary identity cannot join: the record stays with it alone.
                primary_pid = self.create(key)
        if primary_pid is None:
            primary_pid = self.owner(keys[0])
        assert primary_pid is not None
        return primary_pid

    def _link_new(self, index: int, keys: list[IdentityKey]) -> int:
        """A link between identities none of which is known: one new profile."""
        pid = self.create(keys[0])
        counts = {keys[0][1]: 1}
        unique = {keys[0][1]: keys[0][2]} if keys[0][1] in self.policy.unique_types else {}
        for key in keys[1:]:
            _, id_type, value = key
            if key in self.resolved:  # the same identity twice
                continue
            if id_type in unique and unique[id_type] != value:
                self.refuse(index, f"identities.{id_type}",
                            "one person cannot hold two different values of this type")
                continue
            if counts.get(id_type, 0) >= self.policy.max_identities_per_type:
                self.refuse(index, f"identities.{id_type}", "too many identities of this type")
                continue
            counts[id_type] = counts.get(id_type, 0) + 1
            if id_type in self.policy.unique_types:
                unique[id_type] = value
            self.attach(key, pid)
        return pid

    def _may_attach(self, index: int, key: IdentityKey, target: int) -> bool:
        _, id_type, value = key
        facts = group_facts(self.tx, [target], self.policy.unique_types)[target]
        held = facts.unique_values.get(id_type)
        if held and value not in held:
            self.refuse(index, f"identities.{id_type}",
                        "link refused: the profile holds a different value of this type")
            return False
        if facts.type_counts.get(id_type, 0) >= self.policy.max_identities_per_type:
            self.refuse(index, f"identities.{id_type}",
                        "link refused: the profile holds too many identities of this type")
            return False
        return True

    def _try_merge(self, index: int, r: Record, key: IdentityKey, a: int, b: int) -> int:
        """Merge the profiles of ``a`` and ``b`` if the rules allow; the resulting root."""
        policy = self.policy
        facts = group_facts(self.tx, [a, b], policy.unique_types)
        fa, fb = facts[a], facts[b]
        for id_type in policy.unique_types:
            values = fa.unique_values.get(id_type, set()) | fb.unique_values.get(id_type, set())
            if len(values) > 1:
                self.refuse(index, f"identities.{key[1]}",
                            f"link refused: the profiles hold different {id_type} values")
                return a
        for id_type in set(fa.type_counts) | set(fb.type_counts):
            if fa.type_counts.get(id_type, 0) + fb.type_counts.get(id_type, 0) > \
                    policy.max_identities_per_type:
                self.refuse(index, f"identities.{key[1]}",
                            f"link refused: the merged profile would hold too many {id_type}")
                return a
        if fa.merges + fb.merges + 1 > policy.max_merges_per_profile:
            self.refuse(index, f"identities.{key[1]}",
                        "link refused: the profile has absorbed too many profiles")
            return a
        survivor, loser = min(a, b), max(a, b)
        props_s, deleted_s = self.get_props(survivor)
        props_l, _ = self.get_props(loser)
        merged = {**props_l, **props_s}
        moved = merge_profiles(self.tx, r.project, survivor, loser, merged,
                               event_id=r.event_id, at_ms=r.time_ms)
        self.graph_changed = True
        self.props[survivor] = (merged, deleted_s)
        self.props.pop(loser, None)
        for m in moved:
            self.user_map[(r.project, m)] = survivor
        self.regrouped.add(survivor)
        self.touched.update((survivor, loser))
        return survivor

    def unlink(self, keys: list[IdentityKey]) -> None:
        self.flush()
        self.graph_changed = True
        for key in keys:
            found = home_of(self.tx, key)
            if found is None:
                continue
            home, survivor = found
            if home != survivor:
                old, subtree = split_profile(self.tx, home)
                for m in subtree:
                    self.user_map[(key[0], m)] = home
                self.regrouped.update((home, old))
                self.touched.update((home, old))
                self.props.pop(old, None)
                self.refresh()
            else:
                detach_identity(self.tx, key, home)
                self.resolved.pop(key, None)
                self.ident_rows[key] = IdentityRow(key[0], key[1], key[2], None)
                self.touched.add(survivor)

    # -- items and profile operations ------------------------------------------------------

    def item(self, index: int, r: Record) -> None:
        if not r.item_type or not r.item_id:
            self.refuse(index, "item_type" if not r.item_type else "item_id", "required")
            return
        if r.op not in ("set", "delete"):
            self.refuse(index, "op", "item operation must be set or delete")
            return
        props = dict(r.properties) if r.op == "set" else None
        self.items[(r.project, r.item_type, r.item_id)] = ItemRow(
            r.project, r.item_type, r.item_id, props, r.time_ms
        )

    def profile_op(self, index: int, pid: int, r: Record) -> None:
        props, _ = self.get_props(pid)
        new, deleted, problems = apply_profile_op(props, r.op or "", r.properties)
        for field, rule in problems:
            self.refuse(index, field, rule)
        self.set_props(pid, new, deleted)

    def flush_items(self) -> None:
        sets = [i for i in self.items.values() if i.properties is not None]
        drops = [i for i in self.items.values() if i.properties is None]
        from orjson import dumps

        if sets:
            self.tx.executemany(
                "INSERT INTO items (project, item_type, item_id, properties, updated_ms) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (project, item_type, item_id) DO UPDATE "
                "SET properties = excluded.properties, updated_ms = excluded.updated_ms",
                [(i.project, i.item_type, i.item_id, dumps(i.properties).decode(), i.updated_ms)
                 for i in sets],
            )
        if drops:
            self.tx.executemany(
                "DELETE FROM items WHERE project = ? AND item_type = ? AND item_id = ?",
                [(i.project, i.item_type, i.item_id) for i in drops],
            )


def _primary_keys(
    records: Sequence[Record], policy: StitchPolicy
) -> tuple[list[IdentityKey | None], list[IdentityKey]]:
    """Each record's primary identity key (None for items and records without one),
    and every usable key the batch needs resolved."""
    primary: list[IdentityKey | None] = []
    keys: dict[IdentityKey, None] = {}
    for r in records:
        if r.kind == "item" or not r.identities:
            primary.append(None)
            continue
        t, v = next(iter(r.identities.items()))
        key = (r.project, t, v)
        primary.append(key)
        keys[key] = None
        if r.link or r.kind == "link" or r.kind == "unlink":
            for t, v in r.identities.items():
                keys[(r.project, t, v)] = None
    extra = policy.extra_junk_ids
    return primary, [k for k in keys if isinstance(k[2], str) and not is_junk_id(k[2], extra)]


def apply_records(tx: StateTx, records: Sequence[Record], policy: StitchPolicy) -> StateOutcome:
    """Apply a batch of records in order; see the module docstring for the rules."""
    b = _Batch(tx, policy)
    pkeys, keys = _primary_keys(records, policy)
    b.resolved = b.overlay.resolve(tx, keys)
    b.reserve(len(keys) - len(b.resolved))
    profile_survivors = [
        pid for r, key in zip(records, pkeys, strict=True)
        if r.kind == "profile" and key is not None and (pid := b.resolved.get(key)) is not None
    ]
    if profile_survivors:
        b.load_props(profile_survivors)

    assigned: list[int | None] = [None] * len(records)
    primaries: list[IdentityKey | None] = [None] * len(records)
    resolved, touch, fresh, moves = b.resolved, b.touch, b.new_profiles, b.overlay.moves
    for index, r in enumerate(records):
        key = pkeys[index]
        # The hot path: a plain event whose primary identity is already known. Its
        # counters are added up here and written once per profile at the end.
        if key is not None and r.kind == "track" and not r.link:
            pid = resolved.get(key)
            if pid is not None:
                if moves:
                    pid = b.overlay.follow(pid)
                if pid in fresh:
                    b.count(pid, r.time_ms)
                else:
                    t = r.time_ms
                    a = touch.get(pid)
                    if a is None:
                        touch[pid] = [1, t, t]
                        b.touched.add(pid)
                    else:
                        a[0] += 1
                        if t < a[1]:
                            a[1] = t
                        elif t > a[2]:
                            a[2] = t
                assigned[index] = pid
                primaries[index] = key
                continue
        if r.kind == "item":
            b.item(index, r)
            continue
        done = _apply_one(b, index, r)
        if done is not None:
            assigned[index], primaries[index] = done
        resolved = b.resolved  # a split re-reads it

    b.flush()
    b.flush_items()
    if b.graph_changed:
        # Merges, splits or unlinks moved people: each record ends with the person its
        # primary identity belongs to now, which is what resolve_records answers.
        final = _people(tx, b.overlay, [k for k in dict.fromkeys(primaries) if k is not None])
        profile_ids: list[int | None] = []
        for given, primary in zip(assigned, primaries, strict=True):
            now = final.get(primary) if primary is not None else None
            profile_ids.append(now if now is not None else
                               (None if given is None else b.overlay.follow(given)))
    else:
        profile_ids = assigned
    return _outcome(
        tx, b.overlay, profile_ids, touched=b.touched, regrouped=b.regrouped,
        merged=b.user_map, ident_rows=b.ident_rows, owners=b.resolved,
        items=list(b.items.values()), errors=b.errors,
    )


def _people(tx: StateTx, overlay: TxIdentities, keys: Sequence[IdentityKey]) -> dict[IdentityKey, int]:
    """The person each primary identity belongs to now; for an identity an unlink
    detached, the person it was detached from (its earlier records stay there)."""
    found = overlay.resolve(tx, keys)
    missing = [k for k in keys if k not in found]
    if missing:
        found.update(last_owners(tx, missing))
    return found


def _apply_one(b: _Batch, index: int, r: Record) -> tuple[int, IdentityKey] | None:
    """Everything but the hot path: links, unlinks, new people, profile operations.
    Returns the record's person and primary (first usable) identity."""
    ks = _clean_keys(r, index, b.policy, b.errors)
    if not ks:
        if not r.identities:  # (junk ones were reported one by one)
            b.refuse(index, "identities", "a record needs at least one identity")
        return None
    if r.kind == "unlink":
        b.unlink(ks)
        return None
    if r.link or r.kind == "link":
        pid = b.link(index, r, ks)
    else:
        owner = b.owner(ks[0])
        pid = owner if owner is not None else b.create(ks[0])
    if r.kind == "track":
        b.count(pid, r.time_ms)
    elif r.kind == "profile":
        b.profile_op(index, pid, r)
    return pid, ks[0]


def _outcome(
    tx: StateTx,
    overlay: TxIdentities,
    profile_ids: list[int | None],
    *,
    touched: set[int],
    regrouped: set[int],
    merged: dict[tuple[str, int], int],
    ident_rows: dict[IdentityKey, IdentityRow],
    owners: dict[IdentityKey, int],
    items: list[ItemRow],
    errors: list[tuple[int, InvalidInput]],
) -> StateOutcome:
    """The current rows of everything a batch touched, as the event store needs them.

    ``merged`` are the user-map entries the batch itself changed (their profile rows
    are reported too, as merged away or back); ``owners`` the batch's view of who
    holds each identity.
    """
    follow = overlay.follow
    people = {follow(p) for p in touched} | touched
    people.update(p for p in profile_ids if p is not None)
    user_map = dict(merged)
    # Everyone merged into a touched person, so the replica's map is complete even
    # when an earlier batch's event-store commit was lost (entries are idempotent).
    for project, member, survivor in group_members(tx, sorted({follow(p) for p in people})):
        user_map.setdefault((project, member), survivor)
    idents = dict(ident_rows)
    if regrouped:
        for row in _group_identities(tx, sorted({follow(p) for p in regrouped})):
            idents[(row.project, row.id_type, row.id_value)] = row
    for key, row in list(idents.items()):
        owner = owners.get(key)
        if row.user_id is not None and owner is not None and follow(owner) != row.user_id:
            idents[key] = IdentityRow(row.project, row.id_type, row.id_value, follow(owner))
    rows = profile_rows(tx, sorted(people | {m for _, m in merged}))
    return StateOutcome(
        profile_ids=profile_ids, errors=errors, user_map=user_map, profiles=rows,
        identities=list(idents.values()), items=items,
    )


def _group_identities(tx: StateTx, survivors: Sequence[int]) -> list[IdentityRow]:
    marks = ", ".join("?" for _ in survivors)
    return [
        IdentityRow(p, t, v, int(s)) for p, t, v, s in tx.fetchall(
            "SELECT i.project, i.id_type, i.id_value, p.survivor FROM profiles p "
            f"JOIN identities i ON i.user_id = p.user_id WHERE p.survivor IN ({marks})",
            list(survivors),
        )
    ]


def resolve_records(
    tx: StateTx, records: Sequence[Record], policy: StitchPolicy | None = None
) -> StateOutcome:
    """Resolve a batch whose changes are already committed, without writing anything:
    the same profile ids :func:`apply_records` returned, and the current rows.

    Only junk ids are reported again as errors: refused links left no trace to find.
    """
    policy = policy or StitchPolicy()
    overlay = tx_identities(tx)
    errors: list[tuple[int, InvalidInput]] = []
    primaries: list[IdentityKey | None] = []
    all_keys: dict[IdentityKey, None] = {}
    items: dict[tuple[str, str, str], None] = {}
    for index, r in enumerate(records):
        if r.kind == "item":
            primaries.append(None)
            if r.item_type and r.item_id:
                items[(r.project, r.item_type, r.item_id)] = None
            continue
        ks = _clean_keys(r, index, policy, errors)
        primaries.append(ks[0] if ks else None)
        for key in ks if (r.link or r.kind in ("link", "unlink")) else ks[:1]:
            all_keys[key] = None
    found = overlay.resolve(tx, list(all_keys))
    people = _people(tx, overlay, [k for k in dict.fromkeys(primaries) if k is not None])
    profile_ids = [people.get(k) if k is not None else None for k in primaries]
    for index, r in enumerate(records):
        if r.kind == "unlink":
            profile_ids[index] = None
    people_now = set(found.values())
    linked = any(r.kind in ("link", "unlink") or r.link for r in records)
    return _outcome(
        tx, overlay, profile_ids, touched=people_now,
        regrouped=people_now if linked else set(),
        # Whoever was merged into these people may have been merged by this batch.
        merged={(p, m): s for p, m, s in group_members(tx, sorted(people_now))},
        ident_rows={k: IdentityRow(k[0], k[1], k[2], found.get(k)) for k in all_keys},
        owners=found, items=list(_current_items(tx, list(items)).values()), errors=errors,
    )


def _current_items(
    tx: StateTx, keys: Sequence[tuple[str, str, str]]
) -> dict[tuple[str, str, str], ItemRow]:
    import orjson

    out: dict[tuple[str, str, str], ItemRow] = {}
    for key in keys:
        row = tx.fetchone(
            "SELECT properties, updated_ms FROM items WHERE project = ? AND item_type = ? "
            "AND item_id = ?", key,
        )
        out[key] = ItemRow(*key, None, 0) if row is None else ItemRow(
            *key, orjson.loads(row[0]), int(row[1])
        )
    return out
