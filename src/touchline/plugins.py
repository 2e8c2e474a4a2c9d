"""Hooks. Built-in features register through these, exactly as extensions do.

A feature module (for example ``touchline.analyze.hooks``) implements some of the
hooks below with ``@hookimpl``; :func:`plugin_manager` loads the built-in ones and
any installed package that declares a ``touchline`` entry point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from fastapi import APIRouter

    from .runtime import Runtime

__all__ = ["BUILTIN_PLUGINS", "hookimpl", "hookspec", "plugin_manager"]

hookspec = pluggy.HookspecMarker("touchline")
hookimpl = pluggy.HookimplMarker("touchline")

# Feature modules shipped with Touchline; each implements hooks like a plugin would.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "touchline.server.core_hooks",
    "touchline.analyze.hooks",
    "touchline.orchestrate.audience_hooks",
    "touchline.orchestrate.hooks",
    "touchline.optimize.hooks",
)


class Specs:
    @hookspec
    def register_commands(self, cli: click.Group) -> None:
        """Add commands or command groups to the ``touchline`` CLI."""

    @hookspec
    def api_routers(self, runtime: Runtime) -> list[APIRouter]:
        """Routers to mount on the server; called once the runtime is open."""
        raise NotImplementedError

    @hookspec
    def state_schema(self) -> dict[str, dict[str, list[str]]]:
        """Tables a feature keeps in the state store: {schema name: {backend: [DDL]}}."""
        raise NotImplementedError

    @hookspec
    def workers(self, runtime: Runtime) -> list[Any]:
        """Background workers to run inside ``touchline serve`` / ``touchline worker``.

        Each has ``start()`` and ``stop()``; ``stop`` returns once the worker is idle.
        """
        raise NotImplementedError

    @hookspec
    def on_events(self, runtime: Runtime, events: Any) -> None:
        """Called after each committed ingest batch with its events (a pyarrow Table
        with the stitched ``user_id``): the real-time path for audiences and journeys."""

    @hookspec
    def on_stitched_events(self, runtime: Runtime, events: Any) -> None:
        """Called with each ingest batch's events (as for :meth:`on_events`) as soon as
        the state store has stitched them, before the event store commits them: the
        lowest-latency path, for subscribers that act on the events themselves and
        query nothing from the event store (journeys). A crash between the two commits
        replays the batch, so a subscriber may see the same events (same ids) twice."""

    @hookspec
    def on_profiles(self, runtime: Runtime, changed: dict[str, set[int]]) -> None:
        """Called after each committed ingest batch that changed profiles without an
        event (profile operations, identity links): per project, the users whose
        properties or identities changed."""


def plugin_manager() -> pluggy.PluginManager:
    import importlib

    pm = pluggy.PluginManager("touchline")
    pm.add_hookspecs(Specs)
    for name in BUILTIN_PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A built-in feature that is not there yet is skipped, not fatal.
            if exc.name != name:
                raise
            continue
        pm.register(module, name)
    pm.load_setuptools_entrypoints("touchline")
    return pm
