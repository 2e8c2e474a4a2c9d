"""The exception tree of Touchline.

Every error Touchline raises on purpose derives from :class:`TouchlineError`, so a
caller can catch the whole family with one clause. Lower-level errors (sqlite3,
psycopg, duckdb, OSError) are mapped to this tree at the boundary where they occur.

    TouchlineError
    ├── ConfigError            a setting has a bad value or a file cannot be read
    ├── InvalidInput           input broke a rule; names the field and the rule
    │   └── PayloadError       a request body could not be decoded at all
    ├── AuthError              missing or wrong admin token / write key
    ├── NotFound               a project, profile or object does not exist
    ├── Conflict               the object exists already / a concurrent change won
    ├── QueryError             a read-only query was refused or failed
    │   └── QueryTimeout       the query ran past its time limit
    └── StoreError             a backend (event store, state store, log) failed
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "ConfigError",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "PayloadError",
    "QueryError",
    "QueryTimeout",
    "StoreError",
    "TouchlineError",
]


class TouchlineError(Exception):
    """Root of every error Touchline raises on purpose."""


class ConfigError(TouchlineError):
    """A setting has a value that breaks its rule."""


class InvalidInput(TouchlineError):
    """Input broke a rule. ``field`` names where (a dotted path), ``rule`` what."""

    def __init__(self, field: str, rule: str, *, index: int | None = None) -> None:
        self.field = field
        self.rule = rule
        self.index = index
        where = f"record {index}: " if index is not None else ""
        super().__init__(f"{where}{field}: {rule}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (the collector's decode workers); the default
        # would call the class with ``args`` (the message) alone.
        return (type(self), (self.field, self.rule), {**self.__dict__, "args": self.args})

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"field": self.field, "rule": self.rule}
        if self.index is not None:
            out["index"] = self.index
        return out


class PayloadError(InvalidInput):
    """A request body could not be decoded (encoding, compression, JSON)."""


class AuthError(TouchlineError):
    """Missing or wrong credentials."""


class NotFound(TouchlineError):
    """The named object does not exist."""


class Conflict(TouchlineError):
    """The object exists already, or a concurrent change won."""


class QueryError(TouchlineError):
    """A read-only query was refused or failed."""


class QueryTimeout(QueryError):
    """A query ran past its time limit."""


class StoreError(TouchlineError):
    """A storage backend failed."""
