"""The analysis engine inside a running Touchline: one :class:`Analyzer` per runtime,
wired to its event store, its projects' time zones and its saved segments.

The CLI, the REST routes and the Python API all go through :func:`run_analysis`,
:func:`cell_users_page`, :func:`save_cell_segment` and :func:`diagnose_map`, so they
answer identically.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, NotFound
from .engine import Analyzer, known_kind
from .maps import diagnose, load_map, map_cell_users, parse_map
from .source import StoreEventSource

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["analyzer_for", "cell_users_page", "diagnose_map", "forget", "run_analysis",
           "save_cell_segment", "save_segment"]

_ANALYZERS: dict[int, tuple[Any, Analyzer]] = {}
_LOCK = threading.Lock()


def _segment_resolver(runtime: Runtime) -> Any:
    def resolve(project: str, name: str) -> Sequence[int]:
        from ..orchestrate.segments import get_segment, member_ids

        with runtime.state.transaction() as tx:
            get_segment(tx, project, name)  # NotFound when there is none
            return sorted(member_ids(tx, project, name))

    return resolve


def analyzer_for(runtime: Runtime) -> Analyzer:
    """The runtime's analyzer (created on first use, caches kept while it lives)."""
    with _LOCK:
        entry = _ANALYZERS.get(id(runtime))
        if entry is None or entry[0] is not runtime:

            def project_tz(project: str) -> str | None:
                p = runtime.projects.by_name(project)
                if p is None:
                    raise NotFound(f"project {project!r} does not exist")
                return p.time_zone

            an = Analyzer(StoreEventSource(runtime.events), time_zone=runtime.settings.time_zone,
                          project_time_zone=project_tz, segments=_segment_resolver(runtime),
                          clock=runtime.clock)
            entry = (runtime, an)
            _ANALYZERS[id(runtime)] = entry
        return entry[1]


def forget(runtime: Runtime) -> None:
    with _LOCK:
        _ANALYZERS.pop(id(runtime), None)


def run_analysis(runtime: Runtime, kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return analyzer_for(runtime).run(known_kind(kind), spec).to_json()


def cell_users_page(runtime: Runtime, kind: str, spec: Mapping[str, Any], cell: str, *,
                    offset: int = 0, limit: int = 100,
                    properties: Sequence[str] = ()) -> dict[str, Any]:
    """A page of the users behind one number, with the profile properties asked for."""
    if kind == "map":
        ids = _map_users(runtime, spec, cell)
        page = [int(u) for u in ids[offset:offset + limit]]
        an = analyzer_for(runtime)
        rows: list[dict[str, Any]] = [{"user_id": u} for u in page]
        if properties and page:
            cache = an.caches.get(str(spec.get("project", "default")))
            pos = cache.user_positions(page)
            for name in properties:
                vals = cache.profile_prop(name).strings()[pos]
                for row, v in zip(rows, vals, strict=True):
                    row[name] = v
        return {"cell": cell, "total": len(ids), "offset": offset, "limit": limit,
                "users": rows,
                "next_offset": offset + limit if offset + limit < len(ids) else None}
    return analyzer_for(runtime).users(known_kind(kind), spec, cell, offset=offset, limit=limit,
                                       profile_properties=properties)


def _map_ref(spec: Mapping[str, Any]) -> Any:
    ref = spec.get("map")
    if isinstance(ref, Mapping):
        return parse_map(ref)
    if isinstance(ref, str) and ref:
        return load_map(ref)
    raise InvalidInput("map", "is required: a map name, a file, or the map itself")


def _map_users(runtime: Runtime, spec: Mapping[str, Any], cell: str) -> list[int]:
    ids = map_cell_users(analyzer_for(runtime), _map_ref(spec), spec, cell)
    return [int(u) for u in ids]


def diagnose_map(runtime: Runtime, spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec``: ``map`` (name, file or document) plus the diagnosis fields."""
    return diagnose(analyzer_for(runtime), _map_ref(spec), spec)


def save_segment(runtime: Runtime, project: str, name: str, user_ids: Sequence[int],
                 source: dict[str, Any]) -> dict[str, Any]:
    """Save users as a named static segment (the audiences feature's table)."""
    from ..orchestrate.segments import save_static_segment

    with runtime.state.transaction() as tx:
        seg = save_static_segment(tx, project, name, user_ids, source,
                                  now_ms=runtime.clock.now_ms())
    return dict(seg.to_dict())


def save_cell_segment(runtime: Runtime, kind: str, spec: Mapping[str, Any], cell: str,
                      name: str) -> dict[str, Any]:
    """Save the users behind a number as the static segment ``name``."""
    project = str(spec.get("project", "default"))
    if kind == "map":
        ids = _map_users(runtime, spec, cell)
    else:
        ids = analyzer_for(runtime).cell_user_ids(known_kind(kind), spec, cell)
    source = {"analysis": kind, "cell": cell, "spec": dict(spec)}
    return save_segment(runtime, project, name, ids, source)
