"""How the broker answers while a dependency (the database, the state store) is down: a 503
that says when to come back, never a 500 that reads like a bug and never a hang."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from broker import db
from broker.http import error_body
from broker.state import StateUnavailable

log = logging.getLogger(__name__)


async def dependency_down(_request: Request, exc: Exception) -> Response:
    """Exception handler for database and state-store errors: 503 (with ``Retry-After``,
    added by ``RequestContext``) when the dependency is unreachable or cannot serve; anything
    else is re-raised and becomes a 500."""
    if not isinstance(exc, StateUnavailable) and not db.unavailable(exc):
        raise exc
    # The type only: a driver's message can quote the statement and its parameters.
    log.warning("dependency unavailable", extra={"reason": type(exc).__name__})
    return error_body(503, "unavailable",
                      "A service the broker depends on is unreachable; try again shortly.")
