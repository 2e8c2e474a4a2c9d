"""REST routes for audiences (admin token): segments, preview, members, history,
export and static lists. Every route takes ``?project=`` (default ``default``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidInput
from ..orchestrate.audience_csv import export_members_csv, read_user_ids
from ..orchestrate.audience_hooks import engine_for
from ..orchestrate.audience_model import parse_definition
from ..orchestrate.segments import (
    delete_segment,
    get_segment,
    history,
    list_segments,
    members_of,
    save_static_segment,
)
from ..runtime import Runtime
from .auth import admin

__all__ = ["build_router"]

ADMIN = Depends(admin)
DEFINITION = Body(..., description="A segment definition: name, description, conditions.")


def build_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1/segments", tags=["audiences"])

    @r.get("")
    def list_all(project: str = "default", rt: Runtime = ADMIN) -> list[dict[str, Any]]:
        with rt.state.transaction() as tx:
            return [s.to_dict() for s in list_segments(tx, project)]

    @r.post("", status_code=201)
    def create(definition: dict[str, Any] = DEFINITION, project: str = "default",
               rt: Runtime = ADMIN) -> dict[str, Any]:
        """Create or update a dynamic segment and compute its members."""
        return engine_for(rt).save(project, parse_definition(definition)).to_dict()

    @r.post("/preview")
    def preview(definition: dict[str, Any] = DEFINITION, project: str = "default",
                sample: int = Query(20, ge=0, le=1000), rt: Runtime = ADMIN) -> dict[str, Any]:
        """Count and sample the users a definition selects now, without saving it."""
        d = parse_definition(definition, name=str(definition.get("name") or "preview"))
        p = engine_for(rt).preview(project, d, sample)
        return {"count": p.count, "sample": p.sample, "at_ms": p.at_ms}

    @r.get("/{name}")
    def show(name: str, project: str = "default", rt: Runtime = ADMIN) -> dict[str, Any]:
        with rt.state.transaction() as tx:
            return get_segment(tx, project, name).to_dict()

    @r.delete("/{name}", status_code=204)
    def delete(name: str, project: str = "default", rt: Runtime = ADMIN) -> None:
        with rt.state.transaction() as tx:
            delete_segment(tx, project, name)

    @r.post("/{name}/compute")
    def compute(name: str, project: str = "default", rt: Runtime = ADMIN) -> dict[str, Any]:
        signals = engine_for(rt).compute(project, name)
        return {"entered": sum(s.change == "enter" for s in signals),
                "exited": sum(s.change == "exit" for s in signals)}

    @r.get("/{name}/members")
    def members(name: str, project: str = "default", limit: int = Query(1000, ge=1, le=100_000),
                after: int | None = Query(None, description="Page: user ids above this."),
                rt: Runtime = ADMIN) -> dict[str, Any]:
        with rt.state.transaction() as tx:
            get_segment(tx, project, name)
            rows = members_of(tx, project, name, limit=limit, after_user=after)
        return {"members": [{"user_id": u, "since_ms": s} for u, s in rows],
                "next": rows[-1][0] if len(rows) == limit else None}

    @r.get("/{name}/history")
    def member_history(name: str, project: str = "default", user_id: int | None = None,
                       limit: int = Query(1000, ge=1, le=100_000),
                       rt: Runtime = ADMIN) -> list[dict[str, Any]]:
        with rt.state.transaction() as tx:
            get_segment(tx, project, name)
            return [{"id": c.id, "user_id": c.user_id, "change": c.change, "at_ms": c.at_ms}
                    for c in history(tx, project, name, user_id, limit)]

    @r.get("/{name}/export")
    def export(name: str, project: str = "default", rt: Runtime = ADMIN) -> StreamingResponse:
        """The members as CSV (user_id, member_since)."""
        with rt.state.transaction() as tx:
            get_segment(tx, project, name)
            # Read in one transaction so the file is one consistent snapshot.
            chunks = list(export_members_csv(tx, project, name))
        return StreamingResponse(iter(chunks), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{name}.csv"'})

    @r.put("/{name}/static")
    def save_static(name: str, body: dict[str, Any] = Body(...),  # noqa: B008
                    project: str = "default", rt: Runtime = ADMIN) -> dict[str, Any]:
        """Save ``{"user_ids": [...], "source": {...}}`` as the static segment ``name``."""
        ids = body.get("user_ids")
        if not isinstance(ids, list):
            raise InvalidInput("user_ids", "must be a list of user ids")
        source = body.get("source", {"api": True})
        with rt.state.transaction() as tx:
            seg = save_static_segment(tx, project, name, ids, source, now_ms=rt.clock.now_ms())
        engine_for(rt).compute_dependents(project, name)
        return seg.to_dict()

    @r.put("/{name}/csv")
    async def upload_csv(name: str, request: Request, project: str = "default",
                         column: str = "user_id", rt: Runtime = ADMIN) -> dict[str, Any]:
        """Save the user ids of a CSV body (text/csv) as the static segment ``name``;
        bad rows are listed in ``errors`` and the good ones are kept."""
        try:
            text = (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("csv", "must be UTF-8 text") from None
        ids, errors = read_user_ids(text, column)

        def save() -> dict[str, Any]:
            with rt.state.transaction() as tx:
                seg = save_static_segment(tx, project, name, ids,
                                          {"csv": True, "rows": len(ids)},
                                          now_ms=rt.clock.now_ms())
            engine_for(rt).compute_dependents(project, name)
            return seg.to_dict()

        # The stores are synchronous: keep them off the event loop.
        saved = await run_in_threadpool(save)
        return {**saved, "errors": [e.as_dict() for e in errors]}

    return r
