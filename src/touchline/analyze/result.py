"""What every analysis returns: JSON, DataFrames, and the users behind each number.

Each count in a result's JSON carries a ``cell`` name (``"step:2"``, ``"cohort:2026-10-01:3"``
...). :meth:`Result.users` turns a cell back into its users, so any number can be opened
and saved as a segment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from ..errors import NotFound
from .cache import EventCache

__all__ = ["CellUsers", "Result", "i64", "lazy_frame", "pct", "ratio"]

# cell name -> dense user indexes (or None when the name is unknown)
CellUsers = Callable[[str], npt.NDArray[np.int64] | None]


def i64(values: Any) -> npt.NDArray[np.int64]:
    """``values`` as an int64 array (fancy indexing loses the dtype for type checkers)."""
    return np.asarray(values, dtype=np.int64)


def lazy_frame(*args: Any, **kwargs: Any) -> Callable[[], pd.DataFrame]:
    """A DataFrame built only when asked for: most callers want the JSON only."""
    return lambda: pd.DataFrame(*args, **kwargs)


def ratio(a: float, b: float) -> float:
    """``a / b`` rounded for display; 0 when ``b`` is 0."""
    return round(a / b, 6) if b else 0.0


def pct(values: npt.NDArray[Any], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


@dataclass
class Result:
    kind: str
    project: str
    data: dict[str, Any]
    # Tables by name; a callable is built on first use (some are one row per user).
    frames: dict[str, pd.DataFrame | Callable[[], pd.DataFrame]] = field(default_factory=dict)
    cell_users: CellUsers | None = None
    cache: EventCache | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "project": self.project, **self.data}

    def frame(self, name: str | None = None) -> pd.DataFrame:
        """A result table as a DataFrame (the first one when no name is given)."""
        if not self.frames:
            return pd.DataFrame()
        if name is None:
            name = next(iter(self.frames))
        if name not in self.frames:
            raise NotFound(f"no table {name!r}; tables: {', '.join(self.frames)}")
        found = self.frames[name]
        if callable(found):
            found = self.frames[name] = found()
        return found

    def users(self, cell: str) -> npt.NDArray[np.int64]:
        """The user ids behind ``cell``, ascending."""
        found = self.cell_users(cell) if self.cell_users is not None else None
        if found is None or self.cache is None:
            raise NotFound(f"no cell {cell!r} in this {self.kind} result")
        return np.sort(self.cache.users[np.unique(found)])
