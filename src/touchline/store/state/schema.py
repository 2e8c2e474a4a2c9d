"""The state store's own tables, as data: one DDL list per backend.

Lists are append-only (their length is the schema version, see
:meth:`StateStore.ensure_schema`): change a table by appending a statement.
Profile ids are global int64s, allocated from the ``profile`` sequence in creation
order, so the older of two profiles always has the smaller id.
"""

from __future__ import annotations

__all__ = ["CORE_SCHEMA_NAME", "core_schema"]

CORE_SCHEMA_NAME = "core"


def _tables(json_type: str, autoincrement_pk: str, profile_pk: str) -> list[str]:
    return [
        """CREATE TABLE IF NOT EXISTS projects (
            name TEXT PRIMARY KEY,
            write_key TEXT NOT NULL UNIQUE,
            time_zone TEXT NOT NULL,
            created_ms BIGINT NOT NULL)""",
        "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS offsets (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        # `parent` is the profile this one was merged into (the union-find tree, kept
        # unflattened so an unbind can split a subtree off again); `survivor` is the
        # root, kept flattened so resolving an identity is one join.
        f"""CREATE TABLE IF NOT EXISTS profiles (
            user_id {profile_pk},
            project TEXT NOT NULL,
            parent BIGINT,
            survivor BIGINT NOT NULL,
            merges INTEGER NOT NULL DEFAULT 0,
            properties {json_type} NOT NULL,
            first_seen_ms BIGINT,
            last_seen_ms BIGINT,
            event_count BIGINT NOT NULL DEFAULT 0,
            deleted INTEGER NOT NULL DEFAULT 0,
            created_ms BIGINT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS profiles_survivor ON profiles (survivor)",
        # Only merged-away profiles have a parent: a partial index stays small.
        "CREATE INDEX IF NOT EXISTS profiles_parent ON profiles (parent) "
        "WHERE parent IS NOT NULL",
        # `user_id` is the identity's home profile: the one it was first attached to.
        # Its owner is that profile's survivor.
        """CREATE TABLE IF NOT EXISTS identities (
            project TEXT NOT NULL,
            id_type TEXT NOT NULL,
            id_value TEXT NOT NULL,
            user_id BIGINT NOT NULL,
            created_ms BIGINT NOT NULL,
            PRIMARY KEY (project, id_type, id_value))""",
        "CREATE INDEX IF NOT EXISTS identities_user ON identities (user_id)",
        "CREATE INDEX IF NOT EXISTS identities_value ON identities (project, id_value)",
        f"""CREATE TABLE IF NOT EXISTS merge_log (
            id {autoincrement_pk},
            project TEXT NOT NULL,
            survivor BIGINT NOT NULL,
            loser BIGINT NOT NULL,
            at_ms BIGINT NOT NULL,
            event_id TEXT,
            undone_ms BIGINT)""",
        "CREATE INDEX IF NOT EXISTS merge_log_loser ON merge_log (loser)",
        f"""CREATE TABLE IF NOT EXISTS items (
            project TEXT NOT NULL,
            item_type TEXT NOT NULL,
            item_id TEXT NOT NULL,
            properties {json_type} NOT NULL,
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (project, item_type, item_id))""",
        "CREATE TABLE IF NOT EXISTS id_sequences (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        # Where a detached identity was last: a record of that identity from before the
        # unlink still resolves to that person when its batch is replayed.
        """CREATE TABLE IF NOT EXISTS detached_identities (
            project TEXT NOT NULL,
            id_type TEXT NOT NULL,
            id_value TEXT NOT NULL,
            user_id BIGINT NOT NULL,
            detached_ms BIGINT NOT NULL,
            PRIMARY KEY (project, id_type, id_value))""",
        # Ids of the non-event records (profile operations, items, links) applied
        # within the de-duplication horizon: a client resending one after a restart
        # (a Sensors batch with profile_increment, say) must not apply it twice.
        # Events need no such table: their ids are in the event store.
        """CREATE TABLE IF NOT EXISTS applied_records (
            project TEXT NOT NULL,
            event_id TEXT NOT NULL,
            received_ms BIGINT NOT NULL,
            PRIMARY KEY (project, event_id))""",
        "CREATE INDEX IF NOT EXISTS applied_records_received ON applied_records (received_ms)",
    ]


def core_schema() -> dict[str, list[str]]:
    """The core tables for every backend."""
    return {
        # In SQLite an INTEGER PRIMARY KEY is the rowid (64-bit): no separate index.
        "sqlite": _tables("TEXT", "INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER PRIMARY KEY"),
        "postgres": _tables(
            "TEXT", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BIGINT PRIMARY KEY"
        ),
    }
