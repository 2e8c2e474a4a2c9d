"""Finding every number in a result JSON together with the cell that opens it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Counts that are numbers of distinct users: opening the cell gives exactly that many.
# The others (paths through a node, intervals, events) count things a user can have
# several of: the cell gives the users behind them, at most that many.
USER_COUNTS = ("users", "dropoff", "entered", "converted", "excluded_users", "retained",
               "new", "returning", "resurrecting", "dormant", "before", "after")
OTHER_COUNTS = ("count", "value", "intervals", "total")


@dataclass(frozen=True)
class Number:
    cell: str
    count: int
    exact: bool  # the count is of users
    where: str


def _count_for(obj: dict[str, Any], key: str) -> tuple[Any, bool] | None:
    if key == "cell":
        for name in (*USER_COUNTS, *OTHER_COUNTS):
            if isinstance(obj.get(name), int | float) and not isinstance(obj.get(name), bool):
                return obj[name], name in USER_COUNTS
        return None
    base = key.removesuffix("_cell")
    for name in (base, f"{base}_users"):
        if name in obj:
            return obj[name], name in USER_COUNTS
    return None


def numbers(obj: Any, where: str = "") -> Iterator[Number]:
    """Every (cell, count) pair in a result: ``cell``/``X_cell`` keys beside their count,
    ``cells`` lists beside ``retained`` and ``cells`` / ``X_cells`` maps beside the
    counts they name."""
    if isinstance(obj, list):
        for i, x in enumerate(obj):
            yield from numbers(x, f"{where}[{i}]")
        return
    if not isinstance(obj, dict):
        return
    for key, value in obj.items():
        here = f"{where}.{key}"
        if (key == "cell" or key.endswith("_cell")) and isinstance(value, str):
            found = _count_for(obj, key)
            assert found is not None, f"{here}: a cell without a count"
            if found[0] is not None:
                yield Number(value, int(found[0]), found[1], here)
        elif key == "cells" and isinstance(value, list) and "retained" in obj:
            counts = obj["retained"]
            assert len(counts) == len(value), here
            for c, n in zip(value, counts, strict=True):
                yield Number(c, int(n), True, here)
        elif (key == "cells" or key.endswith("_cells")) and isinstance(value, dict):
            counts = obj if key == "cells" else obj[key.removesuffix("_cells")]
            for name, c in value.items():
                yield Number(c, int(counts[name]), True, f"{here}.{name}")
        else:
            yield from numbers(value, here)


def user_counts_without_cells(obj: Any, where: str = "") -> Iterator[str]:
    """Paths of ``users`` counts that no cell opens."""
    if isinstance(obj, list):
        for i, x in enumerate(obj):
            yield from user_counts_without_cells(x, f"{where}[{i}]")
    elif isinstance(obj, dict):
        if isinstance(obj.get("users"), int) and not ({"cell", "users_cell"} & obj.keys()):
            yield f"{where}.users"
        for key, value in obj.items():
            yield from user_counts_without_cells(value, f"{where}.{key}")


def strip_suffix(obj: Any, suffix: str) -> Any:
    """A breakdown part's JSON with its ``/VALUE`` cell suffix taken off, to compare it
    with a whole result."""
    if isinstance(obj, list):
        return [strip_suffix(x, suffix) for x in obj]
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            is_cell = k == "cell" or k.endswith("_cell") or k == "cells" or k.endswith("_cells")
            if is_cell and isinstance(v, str):
                assert v.endswith(suffix), (k, v, suffix)
                out[k] = v.removesuffix(suffix)
            elif is_cell and isinstance(v, list) and all(isinstance(c, str) for c in v):
                out[k] = [c.removesuffix(suffix) for c in v]
            elif is_cell and isinstance(v, dict):
                out[k] = {n: c.removesuffix(suffix) for n, c in v.items()}
            else:
                out[k] = strip_suffix(v, suffix)
        return out
    return obj
