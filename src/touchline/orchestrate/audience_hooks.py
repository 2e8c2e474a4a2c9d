"""Audiences as a built-in plugin: tables, the real-time path, the boundary worker,
CLI commands and REST routes.

Other features reach the running engine with :func:`engine_for` (for example the
journey engine subscribes to enter/exit signals with
``engine_for(runtime).subscribe(callback)``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput
from ..plugins import hookimpl
from .audience_engine import AudienceEngine
from .audience_model import Layer
from .audience_reader import StoreEventReader
from .audience_worker import BoundaryWorker
from .segments import SCHEMA_NAME, STATE_SCHEMA

if TYPE_CHECKING:
    import click
    from fastapi import APIRouter

    from ..runtime import Runtime

__all__ = [
    "AnalysisLayers",
    "api_routers",
    "engine_for",
    "forget",
    "on_events",
    "on_profiles",
    "register_commands",
    "state_schema",
    "workers",
]

_ENGINES: dict[int, tuple[Any, AudienceEngine]] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(runtime: Runtime) -> AudienceEngine:
    """The runtime's audience engine (one per open runtime)."""
    with _ENGINES_LOCK:
        entry = _ENGINES.get(id(runtime))
        # The runtime object is kept in the entry, so its id cannot be reused while
        # the entry exists.
        if entry is None or entry[0] is not runtime:
            engine = AudienceEngine(runtime.state, StoreEventReader(runtime.events),
                                    runtime.clock, layers=_layers(runtime))
            entry = (runtime, engine)
            _ENGINES[id(runtime)] = entry
        return entry[1]


def forget(runtime: Runtime) -> None:
    """Drop the runtime's engine and its connections (before the runtime closes)."""
    with _ENGINES_LOCK:
        entry = _ENGINES.pop(id(runtime), None)
    if entry is not None:
        entry[1].close()


class AnalysisLayers:
    """RFM layers and lifecycle statuses, answered by the analysis engine."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def members(self, project: str, layer: Layer) -> list[int]:
        from ..analyze.service import analyzer_for

        analyzer = analyzer_for(self.runtime)
        spec = {**layer.spec, "project": project}
        if layer.kind == "rfm":
            result = analyzer.run("rfm", spec)
            names = [row["layer"] for row in result.data["layers"]]
            if layer.name not in names:
                raise InvalidInput("rfm_layer", f"must be one of {', '.join(names)}")
            return [int(u) for u in result.users(f"layer:{layer.name}")]
        result = analyzer.run("lifecycle", spec)
        periods = result.data["periods"]
        if not periods:
            return []
        cell = periods[-1]["cells"].get(layer.name)
        if cell is None:
            raise InvalidInput("lifecycle_stage",
                               f"must be one of {', '.join(periods[-1]['cells'])}")
        return [int(u) for u in result.users(cell)]


def _layers(runtime: Runtime) -> AnalysisLayers:
    return AnalysisLayers(runtime)


@hookimpl
def state_schema() -> dict[str, dict[str, list[str]]]:
    return {SCHEMA_NAME: STATE_SCHEMA}


@hookimpl
def on_events(runtime: Runtime, events: Any) -> None:
    # Evaluated on the ingest thread, right after the commit: the lowest latency
    # (benchmarks/audiences.py), and the pipeline merges the events that arrive
    # meanwhile into its next batch. RealtimeWorker is the alternative that frees
    # the ingest thread at the cost of latency.
    engine_for(runtime).on_events(events)


@hookimpl
def on_profiles(runtime: Runtime, changed: dict[str, set[int]]) -> None:
    # A profile operation with no event (profile_set from a CRM sync, say) still moves
    # users in and out of segments on traits, at once.
    engine = engine_for(runtime)
    for project, users in changed.items():
        engine.refresh(project, sorted(users), ())


class _RuntimeWorker(BoundaryWorker):
    """The boundary worker of a runtime; stopping it (at shutdown, after ingest has
    stopped) also releases the engine's event-store connections."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(engine_for(runtime), runtime.clock)
        self.runtime = runtime

    def stop(self) -> None:
        super().stop()
        forget(self.runtime)


@hookimpl
def workers(runtime: Runtime) -> list[Any]:
    return [_RuntimeWorker(runtime)]


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .audience_cli import segment_group

    cli.add_command(segment_group)


@hookimpl
def api_routers(runtime: Runtime) -> list[APIRouter]:
    from ..server.segments import build_router

    return [build_router()]
