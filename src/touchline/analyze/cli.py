"""``touchline analyze KIND --spec FILE|-`` and ``touchline map diagnose MAP``.

Both print JSON on stdout. When a server owns the data directory the question goes to
its REST API; otherwise the stores are opened here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from ..cli import echo_json, pass_settings
from ..config import Settings
from ..errors import TouchlineError
from .kinds import KINDS

__all__ = ["analyze_cmd", "map_group"]


def _read_spec(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: {exc}") from exc
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise click.ClickException(f"{path}: not JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise click.ClickException(f"{path}: the spec must be a JSON object")
    return spec


@contextmanager
def _handle(settings: Settings) -> Iterator[Any]:
    from ..api import Touchline

    try:
        with Touchline(settings) as tl:
            yield tl
    except TouchlineError as exc:
        raise click.ClickException(str(exc)) from exc


def _call(tl: Any, local: Callable[[Any], Any], method: str, path: str, **kw: Any) -> Any:
    """Through the server when one runs, else in this process."""
    if getattr(tl, "_http", None) is not None:
        return tl._call(method, path, **kw)
    from .service import forget

    try:
        return local(tl.runtime)
    finally:
        forget(tl.runtime)


@click.command("analyze")
@click.argument("kind", type=click.Choice(sorted(KINDS)))
@click.option("--spec", "spec_path", required=True, help="The spec: a JSON file, or - for stdin.")
@click.option("--cell", default=None, help="Print the users behind this cell of the result.")
@click.option("--offset", type=int, default=0, show_default=True)
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--save-as", default=None, help="Save the users behind --cell as this segment.")
@pass_settings
def analyze_cmd(settings: Settings, kind: str, spec_path: str, cell: str | None, offset: int,
                limit: int, save_as: str | None) -> None:
    """Run an analysis and print its JSON result (or the users behind one number)."""
    from .service import cell_users_page, run_analysis, save_cell_segment

    spec = _read_spec(spec_path)
    if save_as and not cell:
        raise click.UsageError("--save-as needs --cell")
    with _handle(settings) as tl:
        if save_as and cell:
            out = _call(tl, lambda rt: save_cell_segment(rt, kind, spec, cell, save_as), "POST",
                        f"/api/v1/analyze/{kind}/segment",
                        json={"spec": spec, "cell": cell, "name": save_as})
        elif cell:
            out = _call(tl, lambda rt: cell_users_page(rt, kind, spec, cell, offset=offset,
                                                       limit=limit), "POST",
                        f"/api/v1/analyze/{kind}/users",
                        json={"spec": spec, "cell": cell, "offset": offset, "limit": limit})
        else:
            out = _call(tl, lambda rt: run_analysis(rt, kind, spec), "POST",
                        f"/api/v1/analyze/{kind}", json=spec)
    echo_json(out)


@click.group("map")
def map_group() -> None:
    """Journey maps: diagnose where customers drop out."""


@map_group.command("diagnose")
@click.argument("map_ref", metavar="MAP")
@click.option("--segment", default=None,
              help="Split by a profile property (e.g. group) or a saved segment.")
@click.option("--compare", type=click.Choice(["previous"]), default=None,
              help="Add the change against the previous period of the same length.")
@click.option("--project", default="default", show_default=True)
@click.option("--from", "start", default=None, help="First day (YYYY-MM-DD) [30 days ago].")
@click.option("--to", "end", default=None, help="Day after the last (YYYY-MM-DD) [today].")
@click.option("--time-zone", default=None, help="[the project's time zone]")
@pass_settings
def diagnose_cmd(settings: Settings, map_ref: str, segment: str | None, compare: str | None,
                 project: str, start: str | None, end: str | None,
                 time_zone: str | None) -> None:
    """Diagnose the journey map MAP (a file, or a demo map name: restaurant,
    paid_membership) and print JSON."""
    from .service import diagnose_map

    if end is None:
        today = datetime.now(ZoneInfo(time_zone or settings.time_zone)).date()
        end = (today + timedelta(days=1)).isoformat()
    if start is None:
        start = (datetime.fromisoformat(end).date() - timedelta(days=30)).isoformat()
    map_doc: Any = map_ref
    if Path(map_ref).is_file():
        import yaml

        map_doc = yaml.safe_load(Path(map_ref).read_text("utf-8"))
    spec: dict[str, Any] = {"map": map_doc, "project": project, "from": start, "to": end}
    for key, value in (("segment", segment), ("compare", compare), ("time_zone", time_zone)):
        if value is not None:
            spec[key] = value
    with _handle(settings) as tl:
        out = _call(tl, lambda rt: diagnose_map(rt, spec), "POST", "/api/v1/maps/diagnose",
                    json=spec)
    echo_json(out)
