"""``GET /api/v1/journeys/{id}/report``: the Optimize report over REST (admin token)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query

from ..runtime import Runtime
from ..server.auth import admin

__all__ = ["router"]


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1/journeys", tags=["optimize"])

    @r.get("/{journey_id}/report")
    async def report(
        journey_id: str,
        project: str = "default",
        goal: str | None = Query(None, description="Goal measured; default the first."),
        value_property: str | None = Query(None, description="Money property of the goal "
                                           "event; default amount."),
        cost: str | None = Query(None, description="channel=cost,... per sent message."),
        start: str | None = Query(None, alias="from", description="Entries from (ISO)."),
        end: str | None = Query(None, alias="to", description="Entries before (ISO); a bare "
                                "date includes that day."),
        min_arm_users: int | None = Query(None, ge=1),
        baseline: str | None = Query(None, description="node=variant,... for content "
                                     "experiments."),
        rt: Runtime = Depends(admin),  # noqa: B008
    ) -> dict[str, Any]:
        from .service import report_for, request_from

        req = request_from(rt, project, goal=goal, value_property=value_property, cost=cost,
                           start=start, end=end, min_arm_users=min_arm_users,
                           baseline=baseline)
        # Reads the event store: off the event loop.
        return await asyncio.to_thread(report_for, rt, journey_id, req, project)

    return r
