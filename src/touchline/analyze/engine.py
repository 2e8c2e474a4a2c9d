"""The analysis engine's front door: ``Analyzer.run(kind, spec)``.

One :class:`Analyzer` per event source keeps the columnar caches of its projects
warm, so repeated questions over the same project cost only the kernel pass.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..clock import Clock
from ..errors import InvalidInput, NotFound
from .breakdown import SegmentResolver
from .cache import CacheStore
from .context import Context
from .kinds import KINDS
from .result import Result
from .source import EventSource
from .spec import parse_common, req_mapping

__all__ = ["KINDS", "Analyzer", "known_kind"]



class Analyzer:
    """Answers analysis specs over an :class:`EventSource`.

    ``time_zone`` is used when a spec names none; ``project_time_zone`` (project ->
    IANA name or None) lets the caller supply each project's own zone.
    ``segments`` resolves a saved segment name to its user ids. The caches look for
    new events at most every ``refresh_interval_ms`` (0: before every question).
    """

    def __init__(
        self,
        source: EventSource,
        *,
        time_zone: str = "Asia/Shanghai",
        project_time_zone: Callable[[str], str | None] | None = None,
        segments: SegmentResolver | None = None,
        clock: Clock | None = None,
        refresh_interval_ms: int = 1000,
    ) -> None:
        self.caches = CacheStore(source, clock=clock, refresh_interval_ms=refresh_interval_ms)
        self.time_zone = time_zone
        self.project_time_zone = project_time_zone
        self.segments = segments

    def context(self, spec: Mapping[str, Any]) -> Context:
        spec = req_mapping(spec, "spec")
        project = spec.get("project", "default")
        tz = self.time_zone
        if isinstance(project, str) and self.project_time_zone is not None:
            tz = self.project_time_zone(project) or tz
        common = parse_common(spec, tz)
        return Context(self.caches.get(common.project), common, self.segments)

    def run(self, kind: str, spec: Mapping[str, Any]) -> Result:
        """Answer one analysis. Raises InvalidInput naming the field and rule on bad specs."""
        module = KINDS.get(kind)
        if module is None:
            raise InvalidInput("kind", "must be one of " + ", ".join(KINDS))
        fn: Callable[[Context, Mapping[str, Any]], Result] = importlib.import_module(module).run
        return fn(self.context(spec), spec)

    def users(
        self, kind: str, spec: Mapping[str, Any], cell: str, *, offset: int = 0, limit: int = 100,
        profile_properties: Sequence[str] = (),
    ) -> dict[str, Any]:
        """One page of the users behind a number, with the profile properties asked for."""
        if offset < 0:
            raise InvalidInput("offset", "must be 0 or more")
        if not 1 <= limit <= 10_000:
            raise InvalidInput("limit", "must be from 1 to 10000")
        result = self.run(kind, spec)
        ids = result.users(cell)
        page = ids[offset:offset + limit]
        rows: list[dict[str, Any]] = [{"user_id": int(u)} for u in page]
        cache = result.cache
        if cache is not None and profile_properties and len(page):
            pos = cache.user_positions(page)
            for name in profile_properties:
                col = cache.profile_prop(name)
                vals = col.strings()[pos]
                for row, v in zip(rows, vals, strict=True):
                    row[name] = v
        return {"cell": cell, "total": len(ids), "offset": offset, "limit": limit,
                "users": rows, "next_offset": offset + limit if offset + limit < len(ids) else None}

    def cell_user_ids(self, kind: str, spec: Mapping[str, Any], cell: str) -> list[int]:
        """All user ids behind a number (to save as a segment)."""
        ids = self.run(kind, spec).users(cell)
        return [int(u) for u in np.asarray(ids)]

    def invalidate(self, project: str | None = None) -> None:
        self.caches.invalidate(project)


def known_kind(kind: str) -> str:
    if kind not in KINDS:
        raise NotFound(f"no analysis {kind!r}; known: {', '.join(KINDS)}")
    return kind
