"""The analysis engine as a built-in plugin: CLI commands and REST routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..plugins import hookimpl

if TYPE_CHECKING:
    import click
    from fastapi import APIRouter

    from ..runtime import Runtime

__all__ = ["api_routers", "register_commands"]


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import analyze_cmd, map_group

    cli.add_command(analyze_cmd)
    cli.add_command(map_group)


@hookimpl
def api_routers(runtime: Runtime) -> list[APIRouter]:
    from ..server.analyze import build_router

    return [build_router()]
