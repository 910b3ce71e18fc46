"""API-key authentication for the v1 API, declared per route with its scope."""

from __future__ import annotations

import asyncio
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


async def authenticate(session: AsyncSession, presented: str | None) -> Caller:
    public_id = apikeys.parse(apikeys.API_KEY_PREFIX, presented or "")
    row_id = f"{apikeys.API_KEY_ID_PREFIX}{public_id}" if public_id else None
    row = await session.get(ApiKey, row_id) if row_id else None
    # Hash even when there is nothing to compare against, so that all failures cost alike.
    valid = apikeys.matches(presented or "", row.key_hash if row else b"\0" * 32)
    if row is None or not valid or row.revoked_at is not None:
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
            try:
                caller = await authenticate(session, request.headers.get("x-api-key"))
            except Unauthorized:
                await limits.record_failure(request)
                raise
            if request.path_params.get("projectId") != caller.project_id:
                raise NotFound("No such project.")
            if scope not in caller.scopes:
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


async def authenticate_service(session: AsyncSession, header: str | None) -> str:
    scheme, _, presented = (header or "").partition(" ")
    public_id = (apikeys.parse(apikeys.SERVICE_TOKEN_PREFIX, presented.strip())
                 if scheme.lower() == "bearer" else None)
    row = (await session.get(ServiceToken, f"{apikeys.SERVICE_TOKEN_ID_PREFIX}{public_id}")
           if public_id else None)
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
        await limits.refuse_if_blocked(request)
        pending = self._checking.setdefault(header, asyncio.get_running_loop().create_future())
        try:
            async with request.app.state.sessions() as session:
                try:
                    token_id = await authenticate_service(session, header)
                except ServiceUnauthorized:
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
