"""API-key authentication for the v1 API, declared per route with its scope."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from broker import apikeys, limits
from broker.db import utcnow
from broker.errors import ApiError, Forbidden, NotFound, Unauthorized
from broker.logs import request_id_var
from broker.models import ApiKey, ServiceToken

# Refused requests, one structured line each, for whoever watches for probing and escalation
# (AU-04): outcome, route template and the public id of the key presented, never its secret.
security_log = logging.getLogger("broker.security")

# last_used_at is for operators watching a key go quiet; minute precision spares a write per
# request on the hot path.
LAST_USED_GRANULARITY = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    key_id: str
    project_id: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class Ctx:
    """What a v1 endpoint gets: the request, the authenticated caller, a DB session."""

    request: Request
    caller: Caller
    session: AsyncSession

    @property
    def request_id(self) -> str | None:
        return request_id_var.get()


Endpoint = Callable[[Ctx], Awaitable[Response]]


def claimed_key_id(presented: str | None) -> str | None:
    """The row id a well-formed key names (public, unlike the rest of the key)."""
    public_id = apikeys.parse(apikeys.API_KEY_PREFIX, presented or "")
    return f"{apikeys.API_KEY_ID_PREFIX}{public_id}" if public_id else None


def security_event(request: Request, outcome: str, key_id: str | None, **extra: Any) -> None:
    route = getattr(request.scope.get("route"), "path", None)
    security_log.warning("request refused", extra={
        "event": "security", "outcome": outcome, "key_id": key_id, "route": route,
        "method": request.method, **extra})


async def authenticate(session: AsyncSession, presented: str | None) -> Caller:
    row_id = claimed_key_id(presented)
    row = await session.get(ApiKey, row_id) if row_id else None
    # Hash even when there is nothing to compare against, so that all failures cost alike.
    valid = apikeys.matches(presented or "", row.key_hash if row else b"\0" * 32)
    # Checked on every request, never cached: a revocation or an expiry (to the second)
    # holds from the next request on, in every process.
    if row is None or not valid or row.revoked_at is not None or (
            row.expires_at is not None and row.expires_at <= utcnow()):
        raise Unauthorized()
    caller = Caller(key_id=row.id, project_id=row.project_id, scopes=frozenset(row.scopes))
    await _note_use(session, ApiKey, row)
    return caller


async def _note_use(session: AsyncSession, model: type[ApiKey] | type[ServiceToken],
                    row: ApiKey | ServiceToken) -> bool:
    """Record ``last_used_at`` at most once a minute; True when that wrote (and committed)."""
    now = utcnow()
    if row.last_used_at is not None and now - row.last_used_at <= LAST_USED_GRANULARITY:
        return False
    await session.execute(update(model).where(model.id == row.id).values(last_used_at=now))
    await session.commit()
    return True


def api_key_route(scope: str, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a v1 endpoint: authenticate ``X-API-Key``, then require the key's project to be
    the one in the path (404 otherwise, as for anything that does not exist) and the key to
    carry ``scope`` (403)."""

    async def handler(request: Request) -> Response:
        await limits.refuse_if_blocked(request)
        async with request.app.state.sessions() as session:
            presented = request.headers.get("x-api-key")
            try:
                caller = await authenticate(session, presented)
            except Unauthorized:
                security_event(request, "unauthorized", claimed_key_id(presented))
                await limits.record_failure(request)
                raise
            if request.path_params.get("projectId") != caller.project_id:
                security_event(request, "cross_tenant", caller.key_id,
                               project_id=caller.project_id)
                raise NotFound("No such project.")
            if scope not in caller.scopes:
                security_event(request, "forbidden", caller.key_id,
                               project_id=caller.project_id, scope=scope)
                raise Forbidden(f"This API key lacks the {scope!r} scope.")
            return await endpoint(Ctx(request, caller, session))

    handler.__name__ = endpoint.__name__
    handler.__doc__ = endpoint.__doc__
    handler.scope = scope
    return handler


def route_scope(endpoint: Any) -> str | None:
    return getattr(endpoint, "scope", None)


class ServiceUnauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self) -> None:
        super().__init__("Missing or invalid service token.")


class ServiceCtx:
    """What an internal endpoint gets: the request, the service token's id, and a DB
    session opened on first use (the credentials hot path often needs none)."""

    def __init__(self, request: Request, token_id: str):
        self.request, self.token_id = request, token_id
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            self._session = self.request.app.state.sessions()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def request_id(self) -> str | None:
        return request_id_var.get()


def _claimed_token_id(header: str) -> str | None:
    scheme, _, presented = header.partition(" ")
    public_id = (apikeys.parse(apikeys.SERVICE_TOKEN_PREFIX, presented.strip())
                 if scheme.lower() == "bearer" else None)
    return f"{apikeys.SERVICE_TOKEN_ID_PREFIX}{public_id}" if public_id else None


async def authenticate_service(session: AsyncSession, header: str | None) -> str:
    presented = (header or "").partition(" ")[2]
    row_id = _claimed_token_id(header or "")
    row = await session.get(ServiceToken, row_id) if row_id else None
    valid = apikeys.matches(presented, row.token_hash if row else b"\0" * 32)
    if row is None or not valid or row.revoked_at is not None:
        raise ServiceUnauthorized()
    token_id = row.id
    if not await _note_use(session, ServiceToken, row):
        # End the read transaction: a request that then waits (on a refresh) must not hold
        # a pooled connection while it does.
        await session.rollback()
    return token_id


class TokenCache:
    """Service tokens recently found valid, by digest, for ``TTL`` seconds: the internal API
    is the hot path, and a token lookup per request would dominate it. A revocation reaches
    every process through the state store's channel at once, or within ``TTL`` if missed."""

    TTL = 1.0

    def __init__(self) -> None:
        self._valid: dict[bytes, tuple[float, str]] = {}
        self._checking: dict[str, asyncio.Future[None]] = {}

    async def check(self, request: Request, header: str) -> str:
        """The token id for ``header``, from the cache or the database; concurrent misses
        for one token wait for the first lookup instead of each querying."""
        token_id = self.get(header)
        if token_id is not None:
            return token_id
        pending = self._checking.get(header)
        if pending is not None:
            await asyncio.wait({pending})
            if (token_id := self.get(header)) is not None:
                return token_id
        # Claimed before the first await: readers that arrive while this lookup runs must
        # wait for it, not start their own (a burst of lookups, every TTL, would each take a
        # pooled connection).
        pending = asyncio.get_running_loop().create_future()
        self._checking[header] = pending
        try:
            await limits.refuse_if_blocked(request)
            async with request.app.state.sessions() as session:
                try:
                    token_id = await authenticate_service(session, header)
                except ServiceUnauthorized:
                    security_event(request, "unauthorized", _claimed_token_id(header))
                    await limits.record_failure(request)
                    raise
            self.put(header, token_id)
            return token_id
        finally:
            if self._checking.get(header) is pending:
                del self._checking[header]
            pending.set_result(None)

    def get(self, header: str) -> str | None:
        hit = self._valid.get(apikeys.digest(header))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, header: str, token_id: str) -> None:
        if len(self._valid) > 10_000:
            self._valid.clear()
        self._valid[apikeys.digest(header)] = (time.monotonic() + self.TTL, token_id)

    def clear(self) -> None:
        self._valid.clear()


def service_route(endpoint: Callable[[ServiceCtx], Awaitable[Response]]
                  ) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an internal endpoint: authenticate ``Authorization: Bearer <service token>``."""

    async def handler(request: Request) -> Response:
        cache: TokenCache = request.app.state.service_tokens
        token_id = await cache.check(request, request.headers.get("authorization") or "")
        ctx = ServiceCtx(request, token_id)
        try:
            return await endpoint(ctx)
        finally:
            await ctx.close()

    handler.__name__ = endpoint.__name__
    handler.__doc__ = endpoint.__doc__
    handler.scope = "service"
    return handler
