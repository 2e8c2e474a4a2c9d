"""Map Touchline's exception tree to HTTP answers for the REST API."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import (
    AuthError,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    QueryError,
    QueryTimeout,
    StoreError,
    TouchlineError,
)

__all__ = ["STATUS", "install_error_handlers"]

# Most specific first: the first class an error is an instance of decides.
STATUS: tuple[tuple[type[TouchlineError], int], ...] = (
    (QueryTimeout, 408),
    (InvalidInput, 400),
    (QueryError, 400),
    (ConfigError, 400),
    (AuthError, 401),
    (NotFound, 404),
    (Conflict, 409),
    (StoreError, 503),
    (TouchlineError, 500),
)


def error_body(exc: TouchlineError) -> dict[str, object]:
    body: dict[str, object] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, InvalidInput):
        body.update(exc.as_dict())
    return {"error": body}


def install_error_handlers(app: FastAPI) -> None:
    async def touchline_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TouchlineError)
        status = next(code for cls, code in STATUS if isinstance(exc, cls))
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(error_body(exc), status_code=status, headers=headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "rule": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "", "rule": "invalid request"}
        return JSONResponse(
            {"error": {"type": "InvalidInput", "message": f"{first['field']}: {first['rule']}",
                       **first, "problems": problems}},
            status_code=400,
        )

    app.add_exception_handler(TouchlineError, touchline_error)
    app.add_exception_handler(RequestValidationError, validation_error)
