"""The identity graph in the state store: identities, profiles as union-find, merge log.

An identity (project, type, value) has a *home* profile, the one it was first
attached to. Profiles merge into older ones: ``parent`` is the profile a profile
was merged into, ``survivor`` the root of its tree (kept flattened). The profile
an identity belongs to is its home's survivor. Splitting a subtree off again (an
unbind of an identity that came with a merge) only rewrites ``parent``/``survivor``;
the events each profile collected keep their ingest-time profile id and follow it.

Resolving an identity is the hot path of ingestion, so each store keeps an
:class:`IdentityCache` (identity -> survivor, LRU by count). A transaction reads
through an overlay of its own changes and publishes them to the shared cache only
when it commits; a rollback leaves the cache as it was.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, InvalidInput
from ..store.state.base import StateTx
from .profiles import insert_profiles
from .records import JUNK_IDS, is_junk_id

__all__ = [
    "CACHE_KEY",
    "PROFILE_SEQUENCE",
    "GroupFacts",
    "IdentityCache",
    "IdentityKey",
    "TxIdentities",
    "attach_identities",
    "detach_identity",
    "ensure_profiles",
    "group_facts",
    "group_members",
    "home_of",
    "last_owners",
    "merge_profiles",
    "split_profile",
    "survivors_by_value",
    "survivors_of",
    "tx_identities",
    "use_identity_cache",
]

IdentityKey = tuple[str, str, str]  # (project, id_type, id_value)

# Profile ids come from this sequence, in creation order: the older, the smaller.
PROFILE_SEQUENCE = "profile"

CACHE_KEY = "identity"
_CHUNK = 5_000


class IdentityCache:
    """identity -> survivor profile id, bounded by count, least recently used out.

    Merges are recorded as redirects (loser -> survivor) rather than by finding every
    cached identity of the loser; lookups follow them. Splits are rare and move many
    identities at once, so they clear the cache. ``epoch`` changes whenever cached
    values may have become wrong, so that a reader that filled an entry from a
    snapshot older than a concurrent merge does not publish it.
    """

    # About 330 bytes an entry (measured: key tuple, strings, ordered-dict node): the
    # default holds the active users of a large app in some 80 MB; the rest are one
    # indexed query away.
    def __init__(self, max_entries: int = 250_000, max_redirects: int = 100_000) -> None:
        self.max_entries = max_entries
        self.max_redirects = max_redirects
        self.epoch = 0
        self._map: OrderedDict[IdentityKey, int] = OrderedDict()
        self._moved: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._map)

    def get_many(self, keys: Iterable[IdentityKey]) -> dict[IdentityKey, int]:
        found: dict[IdentityKey, int] = {}
        with self._lock:
            m, moved = self._map, self._moved
            for key in keys:
                pid = m.get(key)
                if pid is None:
                    continue
                m.move_to_end(key)
                while pid in moved:
                    pid = moved[pid]
                found[key] = pid
        return found

    def publish(
        self,
        entries: dict[IdentityKey, int],
        removed: Iterable[IdentityKey],
        moves: dict[int, int],
        clear: bool,
        epoch: int,
    ) -> None:
        """Apply a committed transaction's changes.

        Its removals and redirects are facts and always apply. Its entries are
        published only when no other transaction changed cached values since it
        started: otherwise they may come from an older snapshot.
        """
        with self._lock:
            stale = epoch != self.epoch
            if clear or len(self._moved) + len(moves) > self.max_redirects:
                self._map.clear()
                self._moved.clear()
                self.epoch += 1
                return
            for key in removed:
                self._map.pop(key, None)
            self._moved.update(moves)
            if moves or removed:
                self.epoch += 1
            if stale:
                return
            m = self._map
            for key, pid in entries.items():
                m[key] = pid
                m.move_to_end(key)
            while len(m) > self.max_entries:
                m.popitem(last=False)


@dataclass
class TxIdentities:
    """A transaction's view of the identity cache: its own changes over the shared one."""

    cache: IdentityCache
    epoch: int
    entries: dict[IdentityKey, int] = field(default_factory=dict)
    removed: set[IdentityKey] = field(default_factory=set)
    moves: dict[int, int] = field(default_factory=dict)
    clear: bool = False

    def follow(self, pid: int) -> int:
        moves = self.moves
        while pid in moves:
            pid = moves[pid]
        return pid

    def set(self, key: IdentityKey, pid: int) -> None:
        self.entries[key] = pid
        self.removed.discard(key)

    def remove(self, key: IdentityKey) -> None:
        self.entries.pop(key, None)
        self.removed.add(key)

    def moved(self, loser: int, survivor: int) -> None:
        # Entries pointing at the loser are followed on read, not rewritten here.
        self.moves[loser] = survivor

    def split(self) -> None:
        """After a split, cached survivors may be wrong: read from the database (and
        the shared cache is cleared on commit, so redirects are not needed either)."""
        self.clear = True
        self.entries.clear()
        self.moves.clear()

    def resolve(self, tx: StateTx, keys: Iterable[IdentityKey]) -> dict[IdentityKey, int]:
        """Current survivor of each key that is attached (absent keys are left out)."""
        out: dict[IdentityKey, int] = {}
        missing: list[IdentityKey] = []
        entries, removed = self.entries, self.removed
        for key in keys:
            pid = entries.get(key)
            if pid is not None:
                out[key] = self.follow(pid)
            elif key not in removed:
                missing.append(key)
        if missing and not self.clear:
            shared = self.cache.get_many(missing)
            for key, pid in shared.items():
                out[key] = self.follow(pid)
            missing = [k for k in missing if k not in shared]
        if missing:
            found = survivors_of(tx, missing)
            for key, pid in found.items():
                out[key] = pid
                entries[key] = pid
        return out

    def publish(self) -> None:
        entries = {k: self.follow(p) for k, p in self.entries.items()} if self.moves else self.entries
        self.cache.publish(entries, self.removed, self.moves, self.clear, self.epoch)


def use_identity_cache(store: Any, max_entries: int) -> None:
    """Give a state store an identity cache of at most ``max_entries`` identities
    (setting identity_cache_entries); call before its first transaction."""
    if max_entries < 0:
        raise ConfigError(f"identity_cache_entries: must be 0 or more, got {max_entries}")
    store.caches[CACHE_KEY] = IdentityCache(max_entries=max_entries)


def tx_identities(tx: StateTx) -> TxIdentities:
    """The identity overlay of ``tx`` (created on first use, published on commit)."""
    overlay: TxIdentities | None = tx.scratch.get(CACHE_KEY)
    if overlay is None:
        cache = tx.store.caches.get(CACHE_KEY)
        if cache is None:
            cache = tx.store.caches.setdefault(CACHE_KEY, IdentityCache())
        overlay = TxIdentities(cache=cache, epoch=cache.epoch)
        tx.scratch[CACHE_KEY] = overlay
        tx.on_commit(overlay.publish)
    return overlay


# -- reads -------------------------------------------------------------------------------


def survivors_of(tx: StateTx, keys: Sequence[IdentityKey]) -> dict[IdentityKey, int]:
    """Current survivor of each attached identity, in a few set-based queries."""
    by_project: dict[str, list[tuple[str, str]]] = {}
    for project, id_type, id_value in keys:
        by_project.setdefault(project, []).append((id_type, id_value))
    out: dict[IdentityKey, int] = {}
    for project, pairs in by_project.items():
        for start in range(0, len(pairs), _CHUNK):
            src, params = tx.rows_source(
                [("t", "text"), ("v", "text")], pairs[start:start + _CHUNK]
            )
            rows = tx.fetchall(
                f"SELECT i.id_type, i.id_value, p.survivor FROM {src} AS k "
                "CROSS JOIN identities i JOIN profiles p ON p.user_id = i.user_id "
                "WHERE i.project = ? AND i.id_type = k.t AND i.id_value = k.v",
                [*params, project],
            )
            for t, v, s in rows:
                out[(project, t, v)] = int(s)
    return out


def survivors_by_value(
    tx: StateTx, project: str, id_type: str, values: Sequence[str]
) -> dict[str, int]:
    """value -> current survivor for the attached identities of one type (bulk path)."""
    out: dict[str, int] = {}
    chunk = 50_000
    for start in range(0, len(values), chunk):
        src, params = tx.rows_source([("v", "text")], [(v,) for v in values[start:start + chunk]])
        for v, s in tx.fetchall(
            f"SELECT i.id_value, p.survivor FROM {src} AS k CROSS JOIN identities i "
            "JOIN profiles p ON p.user_id = i.user_id "
            "WHERE i.project = ? AND i.id_type = ? AND i.id_value = k.v",
            [*params, project, id_type],
        ):
            out[v] = int(s)
    return out


def home_of(tx: StateTx, key: IdentityKey) -> tuple[int, int] | None:
    """(home profile, survivor) of an identity, or None when it is not attached."""
    row = tx.fetchone(
        "SELECT i.user_id, p.survivor FROM identities i JOIN profiles p ON p.user_id = i.user_id "
        "WHERE i.project = ? AND i.id_type = ? AND i.id_value = ?",
        key,
    )
    return None if row is None else (int(row[0]), int(row[1]))


@dataclass
class GroupFacts:
    """What the stitching rules need to know about a profile and everything merged in."""

    type_counts: dict[str, int]
    unique_values: dict[str, set[str]]  # values of the types that must not disagree
    merges: int


def group_facts(
    tx: StateTx, survivors: Sequence[int], unique_types: Sequence[str]
) -> dict[int, GroupFacts]:
    facts = {s: GroupFacts({}, {}, 0) for s in survivors}
    if not survivors:
        return facts
    marks = ", ".join("?" for _ in survivors)
    for s, id_type, n in tx.fetchall(
        f"SELECT p.survivor, i.id_type, count(*) FROM profiles p "
        f"JOIN identities i ON i.user_id = p.user_id WHERE p.survivor IN ({marks}) "
        "GROUP BY p.survivor, i.id_type",
        list(survivors),
    ):
        facts[int(s)].type_counts[id_type] = int(n)
    if unique_types:
        tmarks = ", ".join("?" for _ in unique_types)
        for s, id_type, value in tx.fetchall(
            f"SELECT p.survivor, i.id_type, i.id_value FROM profiles p "
            f"JOIN identities i ON i.user_id = p.user_id WHERE p.survivor IN ({marks}) "
            f"AND i.id_type IN ({tmarks})",
            [*survivors, *unique_types],
        ):
            facts[int(s)].unique_values.setdefault(id_type, set()).add(value)
    for s, merges in tx.fetchall(
        f"SELECT user_id, merges FROM profiles WHERE user_id IN ({marks})", list(survivors)
    ):
        facts[int(s)].merges = int(merges)
    return facts


def group_members(tx: StateTx, survivors: Sequence[int]) -> list[tuple[str, int, int]]:
    """(project, profile, survivor) of every profile merged into one of ``survivors``."""
    out: list[tuple[str, int, int]] = []
    ids = list(dict.fromkeys(survivors))
    for start in range(0, len(ids), _CHUNK):
        src, params = tx.rows_source([("id", "bigint")], [(i,) for i in ids[start:start + _CHUNK]])
        out.extend(
            (str(p), int(u), int(s)) for p, u, s in tx.fetchall(
                f"SELECT p.project, p.user_id, p.survivor FROM {src} AS k "
                "CROSS JOIN profiles p WHERE p.survivor = k.id AND p.user_id <> p.survivor",
                params,
            )
        )
    return out


# -- writes ------------------------------------------------------------------------------


def attach_identities(
    tx: StateTx, rows: Sequence[tuple[str, str, str, int]], *, cache: bool = True
) -> None:
    """Attach (project, id_type, id_value, home profile) rows; the keys must be new."""
    if not rows:
        return
    now = tx.now_ms
    tx.insert_many(
        "identities", ("project", "id_type", "id_value", "user_id", "created_ms"),
        [(p, t, v, pid, now) for p, t, v, pid in rows],
    )
    if cache:
        overlay = tx_identities(tx)
        for project, id_type, id_value, pid in rows:
            overlay.set((project, id_type, id_value), overlay.follow(pid))


def detach_identity(tx: StateTx, key: IdentityKey, home: int) -> None:
    """Remove an identity from its profile, remembering where it was."""
    tx.execute(
        "DELETE FROM identities WHERE project = ? AND id_type = ? AND id_value = ?", key
    )
    tx.execute(
        "INSERT INTO detached_identities (project, id_type, id_value, user_id, detached_ms) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (project, id_type, id_value) DO UPDATE "
        "SET user_id = excluded.user_id, detached_ms = excluded.detached_ms",
        (*key, home, tx.now_ms),
    )
    tx_identities(tx).remove(key)


def last_owners(tx: StateTx, keys: Sequence[IdentityKey]) -> dict[IdentityKey, int]:
    """The current survivor of the profile each detached identity was detached from."""
    out: dict[IdentityKey, int] = {}
    for key in keys:
        row = tx.fetchone(
            "SELECT p.survivor FROM detached_identities d JOIN profiles p "
            "ON p.user_id = d.user_id WHERE d.project = ? AND d.id_type = ? AND d.id_value = ?",
            key,
        )
        if row is not None:
            out[key] = int(row[0])
    return out


def merge_profiles(
    tx: StateTx, project: str, survivor: int, loser: int, properties: dict[str, Any],
    *, event_id: str | None, at_ms: int,
) -> list[int]:
    """Merge the tree rooted at ``loser`` into the one rooted at ``survivor``.

    ``properties`` are the survivor's properties after the merge (computed by the
    caller). Counts and seen times are added up on the survivor's row; the loser's
    row keeps its own, so a later split can take them back. Returns the profiles
    whose survivor changed.
    """
    moved = [int(r[0]) for r in tx.fetchall(
        "SELECT user_id FROM profiles WHERE survivor = ?", (loser,)
    )]
    lrow = tx.fetchone(
        "SELECT event_count, first_seen_ms, last_seen_ms, merges FROM profiles WHERE user_id = ?",
        (loser,),
    )
    tx.execute("UPDATE profiles SET parent = ? WHERE user_id = ?", (survivor, loser))
    tx.execute("UPDATE profiles SET survivor = ? WHERE survivor = ?", (survivor, loser))
    count, first, last, merges = lrow
    tx.execute(
        "UPDATE profiles SET properties = ?, event_count = event_count + ?, "
        "merges = merges + ? + 1, "
        "first_seen_ms = CASE WHEN first_seen_ms IS NULL OR first_seen_ms > ? "
        "THEN ? ELSE first_seen_ms END, "
        "last_seen_ms = CASE WHEN last_seen_ms IS NULL OR last_seen_ms < ? "
        "THEN ? ELSE last_seen_ms END WHERE user_id = ?",
        (_dumps(properties), count, merges, first, first, last, last, survivor),
    )
    tx.execute(
        "INSERT INTO merge_log (project, survivor, loser, at_ms, event_id) VALUES (?, ?, ?, ?, ?)",
        (project, survivor, loser, at_ms, event_id),
    )
    tx_identities(tx).moved(loser, survivor)
    return moved


def split_profile(tx: StateTx, home: int) -> tuple[int, list[int]]:
    """Split ``home`` and everything merged into it off its survivor again.

    Returns (the old survivor, the profiles now under ``home``). The ancestors on
    the path to the old survivor give back the event count and merges they took
    over when ``home`` was merged; merged-in properties stay where they were copied.
    """
    subtree = [home]
    frontier = [home]
    while frontier:
        marks = ", ".join("?" for _ in frontier)
        frontier = [int(r[0]) for r in tx.fetchall(
            f"SELECT user_id FROM profiles WHERE parent IN ({marks})", frontier
        )]
        subtree.extend(frontier)
    row = tx.fetchone("SELECT parent, survivor, event_count FROM profiles WHERE user_id = ?",
                      (home,))
    parent, old_survivor, count = int(row[0]), int(row[1]), int(row[2])
    ancestor: int | None = parent
    while ancestor is not None:
        tx.execute(
            "UPDATE profiles SET event_count = CASE WHEN event_count > ? THEN event_count - ? "
            "ELSE 0 END, merges = CASE WHEN merges > ? THEN merges - ? ELSE 0 END "
            "WHERE user_id = ?",
            (count, count, len(subtree), len(subtree), ancestor),
        )
        up = tx.fetchone("SELECT parent FROM profiles WHERE user_id = ?", (ancestor,))
        ancestor = None if up is None or up[0] is None else int(up[0])
    tx.execute("UPDATE profiles SET parent = NULL, merges = ? WHERE user_id = ?",
               (len(subtree) - 1, home))
    for start in range(0, len(subtree), _CHUNK):
        part = subtree[start:start + _CHUNK]
        marks = ", ".join("?" for _ in part)
        tx.execute(f"UPDATE profiles SET survivor = ? WHERE user_id IN ({marks})", [home, *part])
    tx.execute(
        "UPDATE merge_log SET undone_ms = ? WHERE loser = ? AND undone_ms IS NULL",
        (tx.now_ms, home),
    )
    tx_identities(tx).split()
    return old_survivor, subtree


def _dumps(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


# -- the bulk path for file imports -------------------------------------------------


_JUNK_EDGE = frozenset(" \t\n\r\x0b\x0c'\"")
_JUNK_MAX = max(len(j) for j in JUNK_IDS)


def _maybe_junk(value: str) -> bool:
    """A cheap pre-check of is_junk_id for bulk paths: long values that do not start
    or end with whitespace or a quote cannot be junk."""
    return len(value) <= _JUNK_MAX or value[0] in _JUNK_EDGE or value[-1] in _JUNK_EDGE


def ensure_profiles(
    tx: StateTx, project: str, id_type: str, values: Sequence[str], *, seen_ms: Sequence[int]
) -> list[int]:
    """The current person (survivor profile id) of each identity value, creating
    profiles for unknown values, in a few set-based statements.

    New profiles get first/last seen from ``seen_ms`` and no events: add those with
    :func:`touch_profiles`. Junk values are refused before anything is written.
    """
    if len(seen_ms) != len(values):
        raise InvalidInput("seen_ms", "must hold one time per value")
    first: dict[str, list[int]] = {}
    for value, seen in zip(values, seen_ms, strict=True):
        span = first.get(value)
        if span is None:
            first[value] = [seen, seen]
        elif seen < span[0]:
            span[0] = seen
        elif seen > span[1]:
            span[1] = seen
    distinct = list(first)
    for value in distinct:
        if not isinstance(value, str) or (_maybe_junk(value) and is_junk_id(value)):
            index = list(values).index(value)
            raise InvalidInput(f"values[{index}]", "junk id refused", index=index)
    # Sorted, the probes and inserts walk the identity index in order: far fewer
    # page misses than random order once the index outgrows the page cache.
    distinct.sort()
    owner = survivors_by_value(tx, project, id_type, distinct)
    unknown = [v for v in distinct if v not in owner]
    if unknown:
        base = tx.allocate_ids(PROFILE_SEQUENCE, len(unknown))
        insert_profiles(tx, [
            (base + n, project, {}, first[v][0], first[v][1], 0, False)
            for n, v in enumerate(unknown)
        ])
        attach_identities(
            tx, [(project, id_type, v, base + n) for n, v in enumerate(unknown)], cache=False
        )
        owner.update(zip(unknown, range(base, base + len(unknown)), strict=True))
    return [owner[v] for v in values]
