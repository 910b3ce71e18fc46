"""``create_app(settings)``: the route table, middleware and lifespan, all in one place."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker import openapi
from broker import worker as background
from broker.auth import TokenCache, api_key_route, service_route
from broker.credentials import Credentials
from broker.crypto import KeyRing
from broker.errors import ApiError
from broker.http import Json, RequestContext, api_error, http_error
from broker.metrics import serve_metrics
from broker.migrate import head_revision
from broker.outage import dependency_down
from broker.routes import api, connect, health, internal
from broker.runtime import Runtime, open_runtime
from broker.settings import ClientCredentials, Settings
from broker.spec import Provider
from broker.state import StateStore, StateUnavailable

V1 = "/v1/projects/{projectId}/integrations"
INTERNAL = "/internal/v1/projects/{projectId}/integrations"


def routes() -> list[Route]:
    """Every route the broker serves. v1 routes declare their API-key scope here."""
    return [
        Route(V1, api_key_route("read", api.list_integrations), methods=["GET"]),
        Route(f"{V1}/catalog", api_key_route("read", api.get_catalog), methods=["GET"]),
        Route(f"{V1}/catalog/{{provider}}", api_key_route("read", api.get_catalog_entry),
              methods=["GET"]),
        Route(f"{V1}/{{provider}}/install-url",
              api_key_route("integrations:write", api.create_install_url), methods=["POST"]),
        Route(f"{V1}/{{provider}}/lifecycle",
              api_key_route("integrations:write", api.update_lifecycle), methods=["PATCH"]),
        Route(f"{V1}/{{provider}}",
              api_key_route("integrations:write", api.disconnect_integration),
              methods=["DELETE"]),
        Route("/internal/v1/projects/{projectId}/connect-sessions",
              service_route(internal.create_connect_session), methods=["POST"]),
        Route(f"{INTERNAL}/{{provider}}/credentials", service_route(internal.get_credentials),
              methods=["GET"]),
        Route(f"{INTERNAL}/{{provider}}/lifecycle", service_route(internal.update_lifecycle),
              methods=["PATCH"]),
        Route(f"{INTERNAL}/{{provider}}", service_route(internal.disconnect_integration),
              methods=["DELETE"]),
        Route("/internal/v1/projects/{projectId}/audit", service_route(internal.list_audit),
              methods=["GET"]),
        Route("/connect/{session}", connect.open_connect, methods=["GET"]),
        Route("/connect/forms/{form}", connect.submit_form, methods=["POST"]),
        Route("/oauth/{provider}/callback", connect.oauth_callback, methods=["GET"]),
        Route("/openapi.json", serve_openapi, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", serve_metrics, methods=["GET"]),
    ]


async def serve_openapi(request: Request) -> Response:
    return Json(openapi.spec(request.app.state.settings.public_url))


@contextlib.asynccontextmanager
async def _worker(runtime: Runtime, credentials: Credentials, enabled: bool
                  ) -> AsyncIterator[None]:
    """``serve --worker``: the background worker inside the server process."""
    if not enabled:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(background.run(runtime, credentials, stop))
    try:
        yield
    finally:
        stop.set()
        await task


def create_app(
    settings: Settings,
    *,
    ring: KeyRing | None = None,
    providers: Mapping[str, Provider] | None = None,
    clients: Mapping[str, ClientCredentials] | None = None,
    state_store: StateStore | None = None,
    worker: bool = False,
) -> Starlette:
    """Build the ASGI app. The keyword arguments default to what ``settings`` and the
    installed entry points say; they are parameters so tests can hand in their own."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_runtime(settings, ring=ring, providers=providers, clients=clients,
                                state_store=state_store) as runtime:
            for name, value in vars(runtime).items():
                setattr(app.state, name, value)
            app.state.schema_head = head_revision()
            app.state.credentials = credentials = Credentials(runtime)
            app.state.service_tokens = tokens = TokenCache()
            credentials.on_message.append(
                lambda doc: tokens.clear() if "service_tokens" in doc else None)
            async with credentials.running(), _worker(runtime, credentials, worker):
                yield

    return Starlette(
        routes=routes(),
        middleware=[Middleware(RequestContext)],
        exception_handlers={ApiError: api_error, HTTPException: http_error,
                            # A dependency down is a 503, not a 500 (broker.outage).
                            DBAPIError: dependency_down, PoolTimeout: dependency_down,
                            OSError: dependency_down, StateUnavailable: dependency_down},
        lifespan=lifespan,
    )
