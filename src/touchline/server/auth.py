"""Admin authentication: ``Authorization: Bearer <token>`` on every admin route."""

from __future__ import annotations

import secrets

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import AuthError
from ..runtime import Runtime

__all__ = ["admin", "get_runtime"]

_bearer = HTTPBearer(auto_error=False, description="The admin token (see `touchline serve`).")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def admin(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
) -> Runtime:
    """Dependency for admin routes: checks the token and hands over the runtime."""
    runtime = get_runtime(request)
    if credentials is None:
        raise AuthError("missing Authorization: Bearer <admin token>")
    if not secrets.compare_digest(credentials.credentials.encode(), runtime.admin_token.encode()):
        raise AuthError("wrong admin token")
    return runtime
