"""``touchline journey validate|apply|pause|resume|list|stats|timeline|simulate`` and
``touchline worker``."""

from __future__ import annotations

import json
import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..cli import data_option, echo_json, settings_from
from ..errors import TouchlineError
from .validate import DefinitionInvalid, parse_journey

__all__ = ["journey", "worker"]


def _fail(exc: TouchlineError) -> click.ClickException:
    if isinstance(exc, DefinitionInvalid):
        lines = "\n".join(f"  {p}: {r}" for p, r in exc.problems)
        return click.ClickException(f"{len(exc.problems)} problem(s), nothing applied:\n{lines}")
    return click.ClickException(str(exc))


def _runtime(data: Path | None) -> Any:
    from ..runtime import open_runtime

    return open_runtime(settings_from(data), ingest=False)


def _ms(text: str) -> int:
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO date or time") from None


@click.group()
def journey() -> None:
    """Define, publish, pause and measure journeys."""


@journey.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def validate_cmd(files: tuple[str, ...]) -> None:
    """Check definitions (YAML or JSON); every problem is listed with its node path."""
    bad = 0
    for name in files:
        try:
            j = parse_journey(Path(name).read_text("utf-8"))
        except DefinitionInvalid as exc:
            bad += 1
            click.echo(f"{name}: {len(exc.problems)} problem(s)")
            for path, rule in exc.problems:
                click.echo(f"  {path}: {rule}")
            continue
        click.echo(f"{name}: ok ({j.id}, {len(j.nodes)} nodes)")
    if bad:
        raise SystemExit(1)


@journey.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--migrate", "migrate", multiple=True, metavar="OLD=NEW",
              help="Move users in flight at node OLD to node NEW of the new version.")
@data_option
def apply_cmd(file: str, migrate: tuple[str, ...], data: Path | None) -> None:
    """Publish a definition as the journey's next version."""
    from .storage import apply_journey

    moves = dict(m.split("=", 1) for m in migrate if "=" in m)
    rt = _runtime(data)
    try:
        j = parse_journey(Path(file).read_text("utf-8"))
        with rt.state.transaction() as tx:
            version = apply_journey(tx, j, rt.clock.now_ms(), moves)
    except TouchlineError as exc:
        raise _fail(exc) from exc
    finally:
        rt.close()
    click.echo(f"applied {j.id} version {version}")


def _set_status(data: Path | None, project: str, journey_id: str, status: str) -> None:
    from .storage import set_status

    rt = _runtime(data)
    try:
        with rt.state.transaction() as tx:
            set_status(tx, project, journey_id, status, rt.clock.now_ms())
    except TouchlineError as exc:
        raise _fail(exc) from exc
    finally:
        rt.close()
    click.echo(f"{journey_id}: {status}")


@journey.command("pause")
@click.argument("journey_id")
@click.option("--project", default="default", show_default=True)
@data_option
def pause_cmd(journey_id: str, project: str, data: Path | None) -> None:
    """Stop entries and freeze timers (users stay where they are)."""
    _set_status(data, project, journey_id, "paused")


@journey.command("resume")
@click.argument("journey_id")
@click.option("--project", default="default", show_default=True)
@data_option
def resume_cmd(journey_id: str, project: str, data: Path | None) -> None:
    """Resume a paused journey; overdue timers fire at once."""
    _set_status(data, project, journey_id, "active")


@journey.command("list")
@click.option("--project", default=None)
@data_option
def list_cmd(project: str | None, data: Path | None) -> None:
    """List journeys with their current version and status."""
    from .storage import list_journeys

    rt = _runtime(data)
    try:
        with rt.state.transaction() as tx:
            for r in list_journeys(tx, project):
                click.echo(f"{r.project}\t{r.journey_id}\tv{r.version}\t{r.status}")
    finally:
        rt.close()


@journey.command("stats")
@click.argument("journey_id")
@click.option("--project", default="default", show_default=True)
@click.option("--variants", "variants", is_flag=True,
              help="A table of content variants per message node instead of the JSON.")
@data_option
def stats_cmd(journey_id: str, project: str, variants: bool, data: Path | None) -> None:
    """Entered, waiting now, exited, converted, messages by status; per node and, for
    message nodes with content variants, per variant."""
    from .stats import journey_stats

    rt = _runtime(data)
    try:
        with rt.state.transaction() as tx:
            stats = journey_stats(tx, project, journey_id)
    except TouchlineError as exc:
        raise _fail(exc) from exc
    finally:
        rt.close()
    if variants:
        click.echo(_variant_table(stats))
    else:
        echo_json(stats)


def _variant_table(stats: dict[str, Any]) -> str:
    """One line per (node, variant, goal): sent, converted, rate, bandit chance of best."""
    head = ("node", "variant", "sent", "goal", "converted", "rate", "p_best", "messages")
    lines = [head]
    for node, per_node in stats["nodes"].items():
        for vid, v in sorted((per_node.get("variants") or {}).items()):
            best = v.get("bandit", {}).get("p_best")
            status = ",".join(f"{k}={n}" for k, n in sorted(v["messages"].items()))
            for goal in sorted(v["converted"]) or [""]:
                rate = v["conversion"].get(goal)
                lines.append((node, vid, str(v["sent"]), goal or "-",
                              str(v["converted"].get(goal, 0)),
                              "-" if rate is None else f"{rate:.2%}",
                              "-" if best is None else f"{best:.2f}", status))
    if len(lines) == 1:
        return "no message node of this journey has content variants"
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in lines)


@journey.command("timeline")
@click.argument("user_id", type=int)
@click.option("--project", default="default", show_default=True)
@click.option("--journey", "journey_id", default=None)
@data_option
def timeline_cmd(user_id: int, project: str, journey_id: str | None, data: Path | None) -> None:
    """One user's journey timeline."""
    from .stats import user_timeline

    rt = _runtime(data)
    try:
        with rt.state.transaction() as tx:
            echo_json(user_timeline(tx, project, user_id, journey_id))
    finally:
        rt.close()


@journey.command("simulate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--start", "start", required=True, help="ISO date/time the replay starts.")
@click.option("--end", "end", required=True, help="ISO date/time the replay ends.")
@data_option
def simulate_cmd(file: str, start: str, end: str, data: Path | None) -> None:
    """Replay a definition over past events in virtual time; nothing is sent."""
    from .simulate import simulate_runtime

    rt = _runtime(data)
    try:
        j = parse_journey(Path(file).read_text("utf-8"))
        report = simulate_runtime(rt, j, start_ms=_ms(start), end_ms=_ms(end))
    except TouchlineError as exc:
        raise _fail(exc) from exc
    finally:
        rt.close()
    click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))


@click.command()
@data_option
def worker(data: Path | None) -> None:
    """Run every feature's workers without the server: journey timers and delivery,
    audience time boundaries (several may share PostgreSQL)."""
    rt = _runtime(data)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    # The same workers `touchline serve` runs, through the same hook.
    rt.start_workers()
    click.echo("workers running (Ctrl-C to stop)")
    try:
        done.wait()
    finally:
        rt.close()
