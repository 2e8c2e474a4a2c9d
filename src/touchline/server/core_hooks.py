"""The customer data engine's own REST routes, shipped as a built-in plugin.

Profiles and their timelines, read-only SQL, projects, health, ingest status and bulk
import into the running server.
Collection endpoints live in :mod:`touchline.server.collect` and authenticate with
the project's write key, as the SDKs do; everything here needs the admin token.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from ..errors import InvalidInput, NotFound
from ..plugins import hookimpl
from ..runtime import Runtime
from .auth import admin

if TYPE_CHECKING:
    from ..track.importer import ImportReport

__all__ = ["api_routers"]


class QueryBody(BaseModel):
    sql: str = Field(description="One read-only SELECT over events, profiles, identities, items.")
    project: str = Field("default", description="The project whose data the views show.")
    max_rows: int | None = Field(None, ge=1, description="Cut the result at this many rows.")


class ProjectBody(BaseModel):
    name: str = Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$")
    write_key: str | None = None
    time_zone: str | None = None


def _project_dict(p: Any) -> dict[str, Any]:
    return {"name": p.name, "write_key": p.write_key, "time_zone": p.time_zone}


def _known_project(rt: Runtime, name: str) -> None:
    if rt.projects.by_name(name) is None:
        raise NotFound(f"project {name!r} does not exist")


def profile_view(rt: Runtime, project: str, identity: str) -> dict[str, Any]:
    from ..track.stitch import lookup_profile

    _known_project(rt, project)
    with rt.state.transaction() as tx:
        view = lookup_profile(tx, project, identity)
    if view is None:
        raise NotFound(f"no profile holds the identity {identity!r} in project {project!r}")
    return {
        "user_id": view.user_id,
        "identities": view.identities,
        "properties": view.properties,
        "first_seen": view.first_seen_ms,
        "last_seen": view.last_seen_ms,
        "event_count": view.event_count,
    }


def build_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["customer data"])

    @r.get("/health", tags=["system"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @r.get("/ingest/status", tags=["system"])
    def ingest_status(rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        stats = rt.pipeline.stats.as_dict() if rt.pipeline is not None else {}
        lag = rt.log.end_offset - rt.pipeline.offset if rt.pipeline is not None else 0
        return {**stats, "log_offset": rt.log.end_offset if rt.log else 0, "lag_bytes": lag}

    @r.get("/projects", tags=["projects"])
    def list_projects(rt: Runtime = Depends(admin)) -> list[dict[str, Any]]:  # noqa: B008
        with rt.state.transaction() as tx:
            return [_project_dict(p) for p in tx.list_projects()]

    @r.post("/projects", tags=["projects"], status_code=201)
    def create_project(body: ProjectBody, rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        with rt.state.transaction() as tx:
            p = tx.create_project(body.name, write_key=body.write_key,
                                  time_zone=body.time_zone or rt.settings.time_zone)
        return _project_dict(p)

    @r.get("/profiles/{identity}")
    def get_profile(
        identity: str,
        project: str = "default",
        rt: Runtime = Depends(admin),  # noqa: B008
    ) -> dict[str, Any]:
        """A stitched profile by any of its identities (a bare value, or `type:value`)."""
        return profile_view(rt, project, identity)

    @r.get("/profiles/{identity}/events")
    def get_timeline(
        identity: str,
        project: str = "default",
        limit: int = Query(100, ge=1, le=10_000),
        before: int | None = Query(None, description="Only events before this time (ms)."),
        rt: Runtime = Depends(admin),  # noqa: B008
    ) -> dict[str, Any]:
        """The user's events, newest first, across every identity stitched into them."""
        profile = profile_view(rt, project, identity)
        result = rt.events.timeline(project, profile["user_id"], limit=limit, before_ms=before)
        return {"user_id": profile["user_id"], "columns": result.columns, "rows": result.rows}

    @r.post("/query")
    async def query(body: QueryBody, rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        """Read-only SQL over the project's views; see docs/query.md."""
        if not body.sql.strip():
            raise InvalidInput("sql", "must not be empty")
        _known_project(rt, body.project)
        max_rows = min(body.max_rows or rt.settings.query_max_rows, rt.settings.query_max_rows)
        result = await asyncio.to_thread(
            rt.events.query, body.project, body.sql,
            timeout_s=rt.settings.query_timeout_s, max_rows=max_rows,
        )
        return {"columns": result.columns, "rows": result.rows}

    @r.post("/import", tags=["customer data"])
    async def import_upload(
        request: Request,
        project: str = "default",
        fmt: str = Query("sensors", alias="format",
                         description="sensors, segment, csv or parquet"),
        name: str = Query("upload", description="The file's name, for the report."),
        rt: Runtime = Depends(admin),  # noqa: B008
    ) -> dict[str, Any]:
        """Bulk-load the file sent as the body, as `touchline import` does without a
        server: same validation and stitching, rejected lines reported by number. The
        ingest pipeline waits while the import writes; collection goes on."""
        from ..track.importer import FORMATS

        _known_project(rt, project)
        if fmt not in FORMATS:
            raise InvalidInput("format", f"one of {', '.join(FORMATS)}")
        directory = rt.data_dir / "imports"
        directory.mkdir(exist_ok=True)
        suffix = Path(name).suffix if _SUFFIX.match(Path(name).suffix) else ""
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
            report = await asyncio.to_thread(_run_import, rt, Path(tmp), project, fmt)
        finally:
            Path(tmp).unlink(missing_ok=True)
        out = report.as_dict()
        out["files"] = [name]
        for issue in out["issues"]:
            issue["path"] = name
        return out

    return r


_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


def _run_import(rt: Runtime, path: Path, project: str, fmt: str) -> ImportReport:
    return rt.import_files([path], project=project, fmt=fmt)


@hookimpl
def api_routers(runtime: Runtime) -> list[APIRouter]:
    return [build_router()]
