"""Liveness and readiness probes; they reveal nothing but up or not."""

from __future__ import annotations

import asyncio
import logging

from alembic.runtime.migration import MigrationContext
from starlette.requests import Request
from starlette.responses import Response

from broker import keycheck
from broker.http import Json

log = logging.getLogger(__name__)
# Probes give up long before the statement timeout: a database that takes this long to say
# its schema version is not one to send traffic to.
DATABASE_TIMEOUT = 3.0


async def healthz(_request: Request) -> Response:
    return Json({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the database answers at the schema this code expects, the state store
    answers, and the key ring holds the same keys, id for id, that stored credentials were
    written with (the ring was loaded at start, or the process would not be serving)."""
    checks = {"database": "ok", "schema": "ok", "state": "ok", "keys": "ok"}
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT), request.app.state.engine.connect() as conn:
            current = await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision())
        if current != request.app.state.schema_head:
            checks["schema"] = f"at {current}, expected {request.app.state.schema_head}"
    except Exception as exc:
        log.warning("readiness: database unreachable (%s)", type(exc).__name__)
        checks["database"] = "unreachable"
        checks["schema"] = "unknown"
    if checks["schema"] == "ok":
        state = request.app.state
        if state.key_mismatch is None:  # the database was out of reach at start
            state.key_mismatch = await keycheck.check(state.engine, state.ring)
        if state.key_mismatch is None:
            checks["keys"] = "unknown"
        elif state.key_mismatch:
            checks["keys"] = keycheck.describe(state.key_mismatch)
    else:
        checks["keys"] = "unknown"
    if not await request.app.state.state_store.ping():
        checks["state"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return Json({"status": "ready" if ready else "not_ready", "checks": checks},
                status_code=200 if ready else 503)
