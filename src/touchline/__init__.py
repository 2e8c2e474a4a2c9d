"""Touchline: open-source customer journey orchestration.

    >>> import touchline
    >>> tl = touchline.open("./touchline-data")
    >>> tl.query("SELECT event, count(*) FROM events GROUP BY 1")   # a pandas DataFrame
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import Touchline, open
from .errors import (
    AuthError,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    PayloadError,
    QueryError,
    QueryTimeout,
    StoreError,
    TouchlineError,
)

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
    "Touchline",
    "TouchlineError",
    "__version__",
    "open",
]
