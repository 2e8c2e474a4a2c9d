"""``touchline demo``: build the chain-restaurant scenario, load it, then serve it.

The history (100 days, 20,000 customers, over a million events) is written as the
Sensors SDKs would send it and loaded through the importer: the collector's own
record validation and the same identity stitching. It is not replayed through the
live HTTP collector because the collector corrects client clocks against the time
of arrival, which would move 100 days of history to "now".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..cli import data_option, import_progress, settings_from
from ..errors import TouchlineError

__all__ = ["DEMO_SEGMENTS", "demo"]

# The audiences the demo journeys start from (see demo/journeys/*.yaml).
DEMO_SEGMENTS: tuple[dict[str, Any], ...] = (
    {
        "name": "dormant_family_21d",
        "description": "Parent-child families who ordered before but not in the last 21 days",
        "conditions": {"all": [
            {"trait": "group", "value": "family"},
            {"performed": "submit_order"},
            {"not_performed": "submit_order", "within": "21d"},
        ]},
    },
    {
        "name": "white_collar_paid_members",
        "description": "White-collar customers with a paid membership",
        "conditions": {"all": [
            {"trait": "group", "value": "white_collar"},
            {"trait": "is_paid_member", "value": True},
        ]},
    },
)


def _has_demo(runtime: Any) -> bool:
    rows = runtime.events.query("default", "SELECT count(*) FROM events", timeout_s=30,
                                max_rows=1).rows
    return bool(rows and rows[0][0])


def _build(runtime: Any, seed: int, customers: int, days: int) -> None:
    from . import write_sensors_ndjson

    settings = runtime.settings
    work = settings.data_dir / "demo"
    work.mkdir(exist_ok=True)
    path = work / "sensors.ndjson"
    started = time.monotonic()
    with click.progressbar(length=1, label="generating the restaurant's 100 days") as bar:
        n = write_sensors_ndjson(path, seed, end_ms=runtime.clock.now_ms(),
                                 customers=customers, days=days)
        bar.update(1)
    click.echo(f"  {n:,} Sensors records written in {time.monotonic() - started:.1f} s")
    bar, update = import_progress("loading through validation and stitching")
    with bar:
        report = runtime.import_files([path], project="default", fmt="sensors",
                                      progress=update, time_window=False)
    click.echo(f"  loaded {report.loaded:,} events ({report.events_per_s:,.0f}/s), "
               f"{report.rejected:,} rejected (the demo's deliberate junk), e.g.:")
    for issue in report.issues[:3]:
        click.echo(f"    line {issue.line}: {issue.field}: {issue.rule}")
    path.unlink()
    _define_segments(runtime)
    _apply_journeys(runtime)
    click.echo(f"demo built in {time.monotonic() - started:.0f} s")


def _define_segments(runtime: Any) -> None:
    try:
        from ..orchestrate.audience_hooks import engine_for
    except ImportError:
        return
    engine = engine_for(runtime)
    for definition in DEMO_SEGMENTS:
        segment = engine.save("default", dict(definition))
        click.echo(f"  segment {definition['name']}: {getattr(segment, 'size', '')}".rstrip(": "))


def _apply_journeys(runtime: Any) -> None:
    try:
        from ..orchestrate.storage import apply_journey
        from ..orchestrate.validate import parse_journey
    except ImportError:
        return
    for path in sorted((Path(__file__).parent / "journeys").glob("*.yaml")):
        journey = parse_journey(path.read_text("utf-8"))
        with runtime.state.transaction() as tx:
            version = apply_journey(tx, journey, runtime.clock.now_ms())
        click.echo(f"  journey {path.stem} applied (version {version})")


def _summary(runtime: Any) -> None:
    q = runtime.events.query
    rows = q("default", "SELECT count(*), count(DISTINCT user_id), count(DISTINCT distinct_id), "
             "min(time), max(time) FROM events", timeout_s=60, max_rows=1).rows[0]
    click.echo(f"events {rows[0]:,}; customers (stitched) {rows[1]:,} from {rows[2]:,} "
               f"device/login ids; {rows[3][:10]} .. {rows[4][:10]}")


@click.command()
@data_option
@click.option("--seed", default=7, show_default=True, help="Same seed, same data.")
@click.option("--customers", default=20_000, show_default=True)
@click.option("--days", default=100, show_default=True)
@click.option("--port", type=int, default=None, help="Port to serve on [default 8000].")
@click.option("--no-serve", is_flag=True, help="Build the data and stop.")
def demo(data: Path | None, seed: int, customers: int, days: int, port: int | None,
         no_serve: bool) -> None:
    """Build the chain-restaurant demo in the data directory, then serve it."""
    import logging

    from ..runtime import open_runtime
    from ..server.app import serve

    logging.basicConfig(level=logging.WARNING)
    settings = settings_from(data, port=port)
    runtime = open_runtime(settings)
    try:
        if _has_demo(runtime):
            click.echo(f"{settings.data_dir} already holds data: serving it as it is")
        else:
            _build(runtime, seed, customers, days)
        _summary(runtime)
        token = runtime.admin_token
        if no_serve:
            return
        base = f"http://{settings.host}:{settings.port}"
        click.echo(f"""
Open:
  {base}/docs                         the REST API, try it out
Admin token: {token}
Try:
  curl -s -H 'Authorization: Bearer {token}' {base}/api/v1/profiles/login_id:M10001569
  .venv/bin/touchline query --data {settings.data_dir} "SELECT event, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC"
  .venv/bin/touchline map diagnose restaurant --data {settings.data_dir} --segment group
Point an SDK at {base}/sa?project=default (Sensors) to watch new events arrive.
Ctrl-C stops the server; everything acknowledged is flushed first.""")
        serve(runtime, host=settings.host, port=settings.port,
              on_ready="Touchline is serving on http://{host}:{port}")
    except TouchlineError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        runtime.close()
