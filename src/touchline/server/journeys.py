"""REST routes of the journey engine: the CLI's verbs over HTTP (admin token).

Definitions are posted as JSON (the decoded YAML/JSON document) or as YAML text in
``source``. An invalid definition answers 400 with every problem and its path in
``error.problems``; nothing is applied.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from ..errors import InvalidInput
from ..orchestrate.hooks import journeys_for
from ..orchestrate.model import Journey
from ..orchestrate.simulate import simulate_runtime
from ..orchestrate.stats import journey_stats, user_timeline
from ..orchestrate.storage import apply_journey, list_journeys, load_version, set_status
from ..orchestrate.validate import DefinitionInvalid, parse_journey
from ..runtime import Runtime
from .auth import admin

__all__ = ["router", "unsubscribe_router"]


class DefinitionBody(BaseModel):
    definition: dict[str, Any] | None = Field(None, description="The journey document.")
    source: str | None = Field(None, description="Or the document as YAML/JSON text.")
    migrate: dict[str, str] = Field(
        default_factory=dict, description="Old node -> new node for users in flight.")


class EnterBody(BaseModel):
    user_id: int
    properties: dict[str, Any] = Field(default_factory=dict)
    key: str | None = Field(None, description="Idempotency key of this entry.")


class SimulateBody(BaseModel):
    start: datetime
    end: datetime
    definition: dict[str, Any] | None = Field(
        None, description="A draft to simulate instead of the published version.")


def _parse(body: DefinitionBody) -> Journey:
    if body.definition is not None:
        return parse_journey(body.definition)
    if body.source is not None:
        return parse_journey(body.source)
    raise InvalidInput("definition", "send definition (an object) or source (text)")


def unsubscribe_router() -> APIRouter:
    """The one-click unsubscribe link (RFC 8058): the signed token is the credential."""
    from ..orchestrate.hooks import UNSUBSCRIBE_PATH, unsubscribe_secret
    from ..orchestrate.outbox import get_consent, set_consent
    from ..orchestrate.policy import verify_unsubscribe_token
    from .auth import get_runtime

    r = APIRouter(tags=["journeys"])

    def unsubscribe(request: Request, token: str = Query(...)) -> dict[str, Any]:
        rt = get_runtime(request)
        claim = verify_unsubscribe_token(unsubscribe_secret(rt), token, rt.clock.now_ms())
        try:
            user_id = int(claim.user_id)
        except ValueError:
            raise InvalidInput("token", "malformed") from None
        with rt.state.transaction() as tx:
            state = get_consent(tx, claim.project, user_id).unsubscribe(claim.group or None)
            set_consent(tx, claim.project, user_id, state, rt.clock.now_ms())
        return {"unsubscribed": claim.group or "all"}

    r.add_api_route(UNSUBSCRIBE_PATH, unsubscribe, methods=["GET", "POST"])
    return r


def router(runtime: Runtime) -> APIRouter:
    r = APIRouter(prefix="/api/v1/journeys", tags=["journeys"])

    @r.get("")
    def list_all(project: str | None = None,
                 rt: Runtime = Depends(admin)) -> list[dict[str, Any]]:  # noqa: B008
        with rt.state.transaction() as tx:
            return [j.to_dict() for j in list_journeys(tx, project)]

    @r.post("/validate")
    def validate(body: DefinitionBody, rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        try:
            j = _parse(body)
        except DefinitionInvalid as exc:
            return {"ok": False, "problems": [{"field": p, "rule": q} for p, q in exc.problems]}
        return {"ok": True, "id": j.id, "nodes": len(j.nodes)}

    @r.post("", status_code=201)
    def apply(body: DefinitionBody, rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        j = _parse(body)
        with rt.state.transaction() as tx:
            version = apply_journey(tx, j, rt.clock.now_ms(), body.migrate or None)
        journeys_for(rt).engine.refresh()
        return {"project": j.project, "id": j.id, "version": version}

    @r.get("/{journey_id}")
    def get_one(journey_id: str, project: str = "default",
                rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        from ..orchestrate.storage import get_journey

        with rt.state.transaction() as tx:
            rec = get_journey(tx, project, journey_id)
            definition = load_version(tx, project, journey_id, rec.version)
        return {**rec.to_dict(), "definition": definition.model_dump(mode="json")}

    @r.post("/{journey_id}/pause")
    def pause(journey_id: str, project: str = "default",
              rt: Runtime = Depends(admin)) -> dict[str, str]:  # noqa: B008
        with rt.state.transaction() as tx:
            set_status(tx, project, journey_id, "paused", rt.clock.now_ms())
        journeys_for(rt).engine.refresh()
        return {"id": journey_id, "status": "paused"}

    @r.post("/{journey_id}/resume")
    def resume(journey_id: str, project: str = "default",
               rt: Runtime = Depends(admin)) -> dict[str, str]:  # noqa: B008
        with rt.state.transaction() as tx:
            set_status(tx, project, journey_id, "active", rt.clock.now_ms())
        journeys_for(rt).engine.refresh()
        return {"id": journey_id, "status": "active"}

    @r.get("/{journey_id}/stats")
    def stats(journey_id: str, project: str = "default",
              rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        with rt.state.transaction() as tx:
            return journey_stats(tx, project, journey_id)

    @r.post("/{journey_id}/enter")
    def enter(journey_id: str, body: EnterBody, project: str = "default",
              rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        entered = journeys_for(rt).engine.enter_api(project, journey_id, body.user_id,
                                                    body.properties, body.key)
        return {"entered": entered}

    @r.post("/{journey_id}/simulate")
    async def simulate(journey_id: str, body: SimulateBody, project: str = "default",
                       rt: Runtime = Depends(admin)) -> dict[str, Any]:  # noqa: B008
        if body.definition is not None:
            j = parse_journey(body.definition)
        else:
            with rt.state.transaction() as tx:
                from ..orchestrate.storage import get_journey

                rec = get_journey(tx, project, journey_id)
                j = load_version(tx, project, journey_id, rec.version)
        report = await asyncio.to_thread(
            simulate_runtime, rt, j, start_ms=int(body.start.timestamp() * 1000),
            end_ms=int(body.end.timestamp() * 1000))
        return report.to_dict()

    @r.get("/timeline/{user_id}")
    def timeline(user_id: int, project: str = "default",
                 journey: str | None = Query(None),
                 rt: Runtime = Depends(admin)) -> list[dict[str, Any]]:  # noqa: B008
        with rt.state.transaction() as tx:
            return user_timeline(tx, project, user_id, journey)

    return r
