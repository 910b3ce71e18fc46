"""Liveness and readiness probes; they reveal nothing but up or not."""

from __future__ import annotations

import logging

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response

from broker.http import Json

log = logging.getLogger(__name__)


async def healthz(_request: Request) -> Response:
    return Json({"status": "ok"})


async def readyz(request: Request) -> Response:
    checks = {"database": "ok", "state": "ok"}
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readiness: database unreachable (%s)", type(exc).__name__)
        checks["database"] = "unreachable"
    if not await request.app.state.state_store.ping():
        checks["state"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return Json({"status": "ready" if ready else "not_ready", "checks": checks},
                status_code=200 if ready else 503)
