"""``touchline segment ...``: create, preview, list, show, members, export, import-csv,
compute, delete."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..cli import echo_json, pass_settings
from ..config import Settings
from ..errors import TouchlineError
from .audience_csv import export_members_csv, read_user_ids
from .audience_engine import AudienceEngine
from .audience_model import load_definition
from .segments import (
    delete_segment,
    get_segment,
    history,
    list_segments,
    members_of,
    save_static_segment,
)

__all__ = ["segment_group"]


@contextmanager
def _engine(settings: Settings) -> Iterator[tuple[Any, AudienceEngine]]:
    from ..runtime import open_runtime
    from .audience_hooks import engine_for, forget

    try:
        rt = open_runtime(settings, ingest=False)
    except TouchlineError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield rt, engine_for(rt)
    except TouchlineError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        forget(rt)
        rt.close()


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: {exc}") from exc


project_option = click.option("--project", "-p", default="default", show_default=True,
                              help="The project the segment belongs to.")


@click.group("segment")
def segment_group() -> None:
    """Audiences: dynamic segments from conditions, static lists from CSV."""


@segment_group.command("create")
@click.argument("definition")
@project_option
@pass_settings
def create_cmd(settings: Settings, definition: str, project: str) -> None:
    """Create or update a dynamic segment from a YAML/JSON file (- for stdin) and compute it."""
    with _engine(settings) as (_, engine):
        seg = engine.save(project, load_definition(_read(definition)))
        echo_json(seg.to_dict())


@segment_group.command("preview")
@click.argument("definition")
@project_option
@click.option("--sample", default=20, show_default=True, help="How many user ids to show.")
@pass_settings
def preview_cmd(settings: Settings, definition: str, project: str, sample: int) -> None:
    """Count and sample the users a definition selects, without saving it."""
    with _engine(settings) as (_, engine):
        p = engine.preview(project, load_definition(_read(definition), name="preview"), sample)
        echo_json({"count": p.count, "sample": p.sample, "at_ms": p.at_ms})


@segment_group.command("list")
@project_option
@pass_settings
def list_cmd(settings: Settings, project: str) -> None:
    """The project's segments with their member counts."""
    with _engine(settings) as (rt, _), rt.state.transaction() as tx:
        echo_json([{"name": s.name, "kind": s.kind, "members": s.member_count,
                    "computed_ms": s.computed_ms} for s in list_segments(tx, project)])


@segment_group.command("show")
@click.argument("name")
@project_option
@pass_settings
def show_cmd(settings: Settings, name: str, project: str) -> None:
    """A segment's definition or source, and its member count."""
    with _engine(settings) as (rt, _), rt.state.transaction() as tx:
        echo_json(get_segment(tx, project, name).to_dict())


@segment_group.command("members")
@click.argument("name")
@project_option
@click.option("--limit", default=100, show_default=True)
@click.option("--history", "show_history", is_flag=True, help="Enter/exit rows instead.")
@click.option("--user", type=int, default=None, help="With --history: one user's rows.")
@pass_settings
def members_cmd(settings: Settings, name: str, project: str, limit: int, show_history: bool,
                user: int | None) -> None:
    """Members (user_id, since) or the membership history of a segment."""
    with _engine(settings) as (rt, _), rt.state.transaction() as tx:
        get_segment(tx, project, name)
        if show_history:
            echo_json([{"user_id": c.user_id, "change": c.change, "at_ms": c.at_ms}
                       for c in history(tx, project, name, user, limit)])
        else:
            echo_json([{"user_id": u, "since_ms": s}
                       for u, s in members_of(tx, project, name, limit=limit)])


@segment_group.command("export")
@click.argument("name")
@project_option
@click.option("--output", "-o", default="-", help="File to write (- for stdout).")
@pass_settings
def export_cmd(settings: Settings, name: str, project: str, output: str) -> None:
    """Write the members as CSV (user_id, member_since)."""
    with _engine(settings) as (rt, _), rt.state.transaction() as tx:
        get_segment(tx, project, name)
        chunks = export_members_csv(tx, project, name)
        if output == "-":
            for chunk in chunks:
                click.echo(chunk, nl=False)
        else:
            with open(output, "w", encoding="utf-8", newline="") as f:
                for chunk in chunks:
                    f.write(chunk)


@segment_group.command("import-csv")
@click.argument("name")
@click.argument("csv_file")
@project_option
@click.option("--column", default="user_id", show_default=True,
              help="The column that holds user ids.")
@pass_settings
def import_csv_cmd(settings: Settings, name: str, csv_file: str, project: str,
                   column: str) -> None:
    """Save the user ids of a CSV file as the static segment NAME (replacing its members)."""
    with _engine(settings) as (rt, engine):
        ids, errors = read_user_ids(_read(csv_file), column)
        with rt.state.transaction() as tx:
            seg = save_static_segment(tx, project, name, ids,
                                      {"csv": Path(csv_file).name, "rows": len(ids)},
                                      now_ms=rt.clock.now_ms())
        engine.compute_dependents(project, name)
        echo_json({**seg.to_dict(), "errors": [e.as_dict() for e in errors]})


@segment_group.command("compute")
@click.argument("name")
@project_option
@pass_settings
def compute_cmd(settings: Settings, name: str, project: str) -> None:
    """Recompute a dynamic segment in batch; prints how many entered and left."""
    with _engine(settings) as (_, engine):
        signals = engine.compute(project, name)
        echo_json({"entered": sum(s.change == "enter" for s in signals),
                   "exited": sum(s.change == "exit" for s in signals)})


@segment_group.command("delete")
@click.argument("name")
@project_option
@pass_settings
def delete_cmd(settings: Settings, name: str, project: str) -> None:
    """Delete a segment (refused while another segment uses it); its history stays."""
    with _engine(settings) as (rt, _), rt.state.transaction() as tx:
        delete_segment(tx, project, name)
    click.echo(f"deleted {name}")
