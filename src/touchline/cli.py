"""The ``touchline`` command.

Core commands live here; features add theirs through the ``register_commands`` hook
(see :mod:`touchline.plugins`), exactly as an extension would.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .config import Settings, load_settings
from .errors import TouchlineError

__all__ = ["cli", "data_option", "main", "pass_settings"]

F = TypeVar("F", bound=Callable[..., Any])


def data_option(f: F) -> F:
    """``--data DIR`` on a command (also read from TOUCHLINE_DATA)."""
    return click.option(
        "--data", "data", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Data directory [env TOUCHLINE_DATA; default ./touchline-data].",
    )(f)


def settings_from(data: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(data, **overrides)
    except TouchlineError as exc:
        raise click.ClickException(str(exc)) from exc


def pass_settings(f: F) -> F:
    """Give the command a resolved :class:`Settings` as ``settings`` (adds --data)."""
    import functools

    @functools.wraps(f)
    def wrapper(*args: Any, data: Path | None = None, **kwargs: Any) -> Any:
        return f(*args, settings=settings_from(data), **kwargs)

    return data_option(wrapper)  # type: ignore[return-value]


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


@click.group()
@click.version_option(package_name="touchline")
def cli() -> None:
    """Touchline: collect, stitch, analyze and orchestrate customer journeys."""


@cli.command()
@data_option
@click.option("--host", default=None, help="Address to listen on [default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [default 8000].")
def serve(data: Path | None, host: str | None, port: int | None) -> None:
    """Run the collector, the REST API and the workers in one process."""
    import logging

    from .runtime import open_runtime
    from .server.app import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(data, host=host, port=port)
    runtime = open_runtime(settings)
    try:
        if runtime.new_admin_token:
            click.echo(f"Admin token (shown once, kept in {settings.data_dir}/admin-token):")
            click.echo(f"  {runtime.admin_token}")
        run_server(
            runtime, host=settings.host, port=settings.port,
            on_ready="Touchline is serving on http://{host}:{port}  (API docs: /docs)",
        )
    finally:
        runtime.close()


@cli.command("config")
@pass_settings
def config_cmd(settings: Settings) -> None:
    """List every setting: its value, where the value came from, and what it does."""
    for setting, value, source in settings.items():
        shown = "(set)" if setting.name == "admin_token" and value else value
        click.echo(f"{setting.name} = {shown!r}  [{source}; env {setting.env_var}]")
        click.echo(f"    {setting.help}")


@cli.group()
def project() -> None:
    """Create and list projects (each has its own data and write key)."""


@project.command("create")
@click.argument("name")
@click.option("--write-key", default=None, help="Write key for the SDKs [default: generated].")
@click.option("--time-zone", default=None, help="Project time zone [default: setting time_zone].")
@pass_settings
def project_create(settings: Settings, name: str, write_key: str | None, time_zone: str | None) -> None:
    """Create a project."""
    from .store.state import open_state_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    state = open_state_store(settings.state_url, settings.data_dir)
    try:
        with state.transaction() as tx:
            if tx.get_project("default") is None:
                tx.create_project("default", time_zone=settings.time_zone)
            p = tx.create_project(name, write_key=write_key, time_zone=time_zone or settings.time_zone)
    except TouchlineError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        state.close()
    click.echo(f"created project {p.name}  write key {p.write_key}  time zone {p.time_zone}")


@project.command("list")
@pass_settings
def project_list(settings: Settings) -> None:
    """List projects with their write keys."""
    from .store.state import open_state_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    state = open_state_store(settings.state_url, settings.data_dir)
    try:
        with state.transaction() as tx:
            if tx.get_project("default") is None:
                tx.create_project("default", time_zone=settings.time_zone)
            projects = list(tx.list_projects())
    finally:
        state.close()
    for p in projects:
        click.echo(f"{p.name}\t{p.write_key}\t{p.time_zone}")


@cli.command()
@click.argument("sql")
@click.option("--project", default="default", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@pass_settings
def query(settings: Settings, sql: str, project: str, fmt: str) -> None:
    """Run a read-only SQL query (through the server when one is running)."""
    from .api import Touchline

    try:
        with Touchline(settings) as tl:
            result = tl.query_rows(sql, project)
    except TouchlineError as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "json":
        echo_json(result)
    elif fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(result["columns"])
        w.writerows(result["rows"])
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*result["columns"])
        for row in result["rows"]:
            table.add_row(*("" if v is None else str(v) for v in row))
        Console().print(table)


def import_progress(description: str) -> Any:
    """A rich progress bar fed by the importer's progress callback."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(description), BarColumn(), DownloadColumn(),
                   TextColumn("{task.fields[lines]:,} lines, {task.fields[rejected]:,} rejected"),
                   TimeRemainingColumn(), transient=False)
    tasks: dict[str, Any] = {}

    def update(p: Any) -> None:
        if p.path not in tasks:
            tasks[p.path] = bar.add_task(p.path, total=p.bytes_total, lines=0, rejected=0)
        bar.update(tasks[p.path], completed=p.bytes_read, lines=p.lines, rejected=p.rejected)

    return bar, update


@cli.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--project", default="default", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["sensors", "segment", "csv", "parquet"]),
              default="sensors", show_default=True)
@click.option("--show-rejects", default=20, show_default=True,
              help="How many rejected lines to print (all are counted).")
@pass_settings
def import_cmd(settings: Settings, files: tuple[str, ...], project: str, fmt: str,
               show_rejects: int) -> None:
    """Bulk-load files through the same validation and stitching as the collector."""
    from .runtime import open_runtime
    from .server.app import read_server_file

    if read_server_file(settings.data_dir) is not None:
        # The server owns the embedded stores: it imports what it is sent.
        _import_through_server(settings, files, project, fmt, show_rejects)
        return
    runtime = open_runtime(settings, ingest=False)
    try:
        if runtime.projects.by_name(project) is None:
            raise click.ClickException(f"project {project!r} does not exist")
        bar, update = import_progress("importing")
        with bar:
            report = runtime.import_files(files, project=project, fmt=fmt, progress=update)
    except TouchlineError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        runtime.close()
    _print_report(report.as_dict(), show_rejects)


def _import_through_server(settings: Settings, files: tuple[str, ...], project: str, fmt: str,
                           show_rejects: int) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from .api import Touchline

    try:
        with Touchline(settings) as tl:
            for path in files:
                with Progress(TextColumn(f"sending {path} to the server"), BarColumn(),
                              DownloadColumn()) as bar:
                    task = bar.add_task(path, total=Path(path).stat().st_size)

                    def sent_so_far(sent: int, total: int, task: Any = task) -> None:
                        bar.update(task, completed=sent)

                    report = tl.import_file(path, project=project, fmt=fmt,
                                            progress=sent_so_far)
                _print_report(report, show_rejects)
    except TouchlineError as exc:
        raise click.ClickException(str(exc)) from exc


def _print_report(report: dict[str, Any], show_rejects: int) -> None:
    click.echo(f"loaded {report['loaded']:,} of {report['lines']:,} lines in "
               f"{report['seconds']:.1f} s ({report['events_per_s']:,.0f}/s); "
               f"{report['rejected']:,} rejected, {report['duplicates']:,} duplicates")
    for issue in report["issues"][:show_rejects]:
        click.echo(f"  {issue['path']}:{issue['line']}: {issue['field']}: {issue['rule']}")
    if report["rejected"] > show_rejects:
        click.echo(f"  ... and {report['rejected'] - show_rejects:,} more")


def main() -> None:
    from .demo.command import demo
    from .plugins import plugin_manager

    cli.add_command(demo)
    plugin_manager().hook.register_commands(cli=cli)
    cli()
