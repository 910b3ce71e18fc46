"""API-key authentication for the v1 API, declared per route with its scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from broker import apikeys
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
    row = await session.get(ApiKey, f"{apikeys.API_KEY_ID_PREFIX}{public_id}") if public_id else None
    # Hash even when there is nothing to compare against, so that all failures cost alike.
    valid = apikeys.matches(presented or "", row.key_hash if row else b"\0" * 32)
    if row is None or not valid or row.revoked_at is not None:
        raise Unauthorized()
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_GRANULARITY:
        await session.execute(update(ApiKey).where(ApiKey.id == row.id)
                              .values(last_used_at=now))
        await session.commit()
    return Caller(key_id=row.id, project_id=row.project_id, scopes=frozenset(row.scopes))


def api_key_route(scope: str, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a v1 endpoint: authenticate ``X-API-Key``, then require the key's project to be
    the one in the path (404 otherwise, as for anything that does not exist) and the key to
    carry ``scope`` (403)."""

    async def handler(request: Request) -> Response:
        async with request.app.state.sessions() as session:
            caller = await authenticate(session, request.headers.get("x-api-key"))
            if request.path_params.get("projectId") != caller.project_id:
                raise NotFound("No such project.")
            if scope not in caller.scopes:
                raise Forbidden(f"This API key lacks the {scope!r} scope.")
            return await endpoint(Ctx(request, caller, session))

    handler.__name__ = endpoint.__name__
    handler.__doc__ = endpoint.__doc__
    setattr(handler, "scope", scope)
    return handler


def route_scope(endpoint: Any) -> str | None:
    return getattr(endpoint, "scope", None)


class ServiceUnauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self) -> None:
        super().__init__("Missing or invalid service token.")


@dataclass(frozen=True)
class ServiceCtx:
    """What an internal endpoint gets: the request, the service token's id, a DB session."""

    request: Request
    token_id: str
    session: AsyncSession

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
    now, token_id = utcnow(), row.id
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_GRANULARITY:
        await session.execute(update(ServiceToken).where(ServiceToken.id == token_id)
                              .values(last_used_at=now))
        await session.commit()
    else:
        # End the read transaction: a request that then waits (on a refresh) must not hold
        # a pooled connection while it does.
        await session.rollback()
    return token_id


def service_route(endpoint: Callable[[ServiceCtx], Awaitable[Response]]
                  ) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an internal endpoint: authenticate ``Authorization: Bearer <service token>``."""

    async def handler(request: Request) -> Response:
        async with request.app.state.sessions() as session:
            token_id = await authenticate_service(session,
                                                  request.headers.get("authorization"))
            return await endpoint(ServiceCtx(request, token_id, session))

    handler.__name__ = endpoint.__name__
    handler.__doc__ = endpoint.__doc__
    setattr(handler, "scope", "service")
    return handler
