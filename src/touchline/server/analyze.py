"""REST routes of the analysis engine (admin token required).

- ``POST /api/v1/analyze/{kind}``: the spec in, the result out.
- ``GET|POST /api/v1/analyze/{kind}/users``: the users behind one number (``cell``),
  paginated, with profile properties; ``kind`` may be ``map``.
- ``POST /api/v1/analyze/{kind}/segment``: save them as a named static segment.
- ``POST /api/v1/maps/diagnose``: diagnose a journey map.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, Field

from ..errors import InvalidInput
from ..runtime import Runtime
from .auth import admin

__all__ = ["build_router"]


class UsersBody(BaseModel):
    spec: dict[str, Any] = Field(description="The analysis spec whose number is opened.")
    cell: str = Field(description="The cell name given next to the number in the result.")
    offset: int = Field(0, ge=0)
    limit: int = Field(100, ge=1, le=10_000)
    properties: list[str] = Field(default_factory=list,
                                  description="Profile properties to return with each user.")


class SegmentBody(BaseModel):
    spec: dict[str, Any]
    cell: str
    name: str = Field(description="Name of the static segment to create or replace.")


def build_router() -> APIRouter:
    from ..analyze import service

    r = APIRouter(prefix="/api/v1", tags=["analysis"])

    @r.post("/analyze/{kind}/users")
    async def users_post(kind: str, body: UsersBody,
                         rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        return await asyncio.to_thread(service.cell_users_page, rt, kind, body.spec, body.cell,
                                       offset=body.offset, limit=body.limit,
                                       properties=body.properties)

    @r.get("/analyze/{kind}/users")
    async def users_get(
        kind: str, spec: str = Query(description="The spec as JSON text."),
        cell: str = Query(), offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=10_000),
        properties: str = Query("", description="Profile properties, comma separated."),
        rt: Runtime = Depends(admin),  # noqa: B008
    ) -> dict[str, Any]:
        try:
            parsed = json.loads(spec)
        except ValueError:
            raise InvalidInput("spec", "must be JSON") from None
        props = [p for p in properties.split(",") if p]
        return await asyncio.to_thread(service.cell_users_page, rt, kind, parsed, cell,
                                       offset=offset, limit=limit, properties=props)

    @r.post("/analyze/{kind}/segment")
    async def save(kind: str, body: SegmentBody,
                   rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        return await asyncio.to_thread(service.save_cell_segment, rt, kind, body.spec,
                                       body.cell, body.name)

    @r.post("/analyze/{kind}")
    async def analyze(kind: str, spec: dict[str, Any] = Body(...),  # noqa: B008
                      rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        return await asyncio.to_thread(service.run_analysis, rt, kind, spec)

    @r.post("/maps/diagnose")
    async def diagnose(spec: dict[str, Any] = Body(...),  # noqa: B008
                       rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        return await asyncio.to_thread(service.diagnose_map, rt, spec)

    return r
