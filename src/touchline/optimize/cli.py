"""``touchline journey report``: the Optimize report of one journey, JSON or a table."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli import data_option, echo_json, settings_from
from ..errors import TouchlineError

__all__ = ["report_cmd"]


@click.command("report")
@click.argument("journey_id")
@click.option("--project", default="default", show_default=True)
@click.option("--goal", default=None, help="Goal to measure [default: the journey's first].")
@click.option("--value-property", "value_property", default=None,
              help="Goal event property holding the money [default: amount].")
@click.option("--cost", default=None, metavar="CHANNEL=COST,...",
              help="Cost of one sent message per channel, e.g. webhook=0.01,sms=0.05 "
                   "(*=COST for any other channel).")
@click.option("--from", "start", default=None, help="Entries from this date or time (ISO).")
@click.option("--to", "end", default=None,
              help="Entries before this time; a bare date includes that whole day.")
@click.option("--min-arm-users", type=int, default=None,
              help="Arms with fewer users get no verdict [default 100].")
@click.option("--baseline", default=None, metavar="NODE=VARIANT,...",
              help="Variant a content experiment is compared with [default: its default "
                   "or first variant].")
@click.option("--table", "as_table", is_flag=True, help="A readable table instead of JSON.")
@data_option
def report_cmd(journey_id: str, project: str, goal: str | None, value_property: str | None,
               cost: str | None, start: str | None, end: str | None,
               min_arm_users: int | None, baseline: str | None, as_table: bool,
               data: Path | None) -> None:
    """Each strategy of a journey against its control: conversion, GMV, ARPU, cost,
    ROI and uplift with 95% intervals, per experiment split and content experiment."""
    from ..runtime import open_runtime
    from .service import report_for, request_from
    from .table import report_table

    rt = open_runtime(settings_from(data), ingest=False)
    try:
        req = request_from(rt, project, goal=goal, value_property=value_property, cost=cost,
                           start=start, end=end, min_arm_users=min_arm_users,
                           baseline=baseline)
        report = report_for(rt, journey_id, req, project)
    except TouchlineError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        rt.close()
    if as_table:
        click.echo(report_table(report))
    else:
        echo_json(report)
