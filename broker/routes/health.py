"""Liveness and readiness probes; they reveal nothing but up or not."""

from __future__ import annotations

import logging

from alembic.runtime.migration import MigrationContext
from starlette.requests import Request
from starlette.responses import Response

from broker.http import Json

log = logging.getLogger(__name__)


async def healthz(_request: Request) -> Response:
    return Json({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the database answers at the schema this code expects and the state store
    answers (the key ring was loaded at start, or the process would not be serving)."""
    checks = {"database": "ok", "schema": "ok", "state": "ok"}
    try:
        async with request.app.state.engine.connect() as conn:
            current = await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision())
        if current != request.app.state.schema_head:
            checks["schema"] = f"at {current}, expected {request.app.state.schema_head}"
    except Exception as exc:
        log.warning("readiness: database unreachable (%s)", type(exc).__name__)
        checks["database"] = "unreachable"
        checks["schema"] = "unknown"
    if not await request.app.state.state_store.ping():
        checks["state"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return Json({"status": "ready" if ready else "not_ready", "checks": checks},
                status_code=200 if ready else 503)
