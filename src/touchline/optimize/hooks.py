"""The Optimize step as a built-in plugin: ``touchline journey report`` and its route."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..plugins import hookimpl

if TYPE_CHECKING:
    import click
    from fastapi import APIRouter

    from ..runtime import Runtime

__all__ = ["api_routers", "register_commands"]


# Last: the `journey` group it joins is registered by the journeys plugin.
@hookimpl(trylast=True)
def register_commands(cli: click.Group) -> None:
    import click as _click

    from .cli import report_cmd

    group = cli.commands.get("journey")
    if isinstance(group, _click.Group):
        group.add_command(report_cmd)
    else:
        # Without the journeys feature there is no group to join.
        cli.add_command(report_cmd, "journey-report")


@hookimpl
def api_routers(runtime: Runtime) -> list[APIRouter]:
    from .routes import router

    return [router()]
