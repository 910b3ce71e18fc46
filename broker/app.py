"""``create_app(settings)``: the route table, middleware and lifespan, all in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import httpx2

from broker import openapi, registry
from broker.auth import api_key_route, service_route
from broker.crypto import KeyRing
from broker.db import create_engine, sessionmaker
from broker.errors import ApiError
from broker.http import Json, RequestContext, api_error, http_error
from broker.routes import api, connect, health, internal
from broker.settings import ClientCredentials, Settings
from broker.spec import Provider
from broker.state import StateStore, open_state

V1 = "/v1/projects/{projectId}/integrations"


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
        Route("/connect/{session}", connect.open_connect, methods=["GET"]),
        Route("/connect/forms/{form}", connect.submit_form, methods=["POST"]),
        Route("/oauth/{provider}/callback", connect.oauth_callback, methods=["GET"]),
        Route("/openapi.json", serve_openapi, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
    ]


async def serve_openapi(request: Request) -> Response:
    return Json(openapi.spec(request.app.state.settings.public_url))


def create_app(
    settings: Settings,
    *,
    ring: KeyRing | None = None,
    providers: Mapping[str, Provider] | None = None,
    clients: Mapping[str, ClientCredentials] | None = None,
    state_store: StateStore | None = None,
) -> Starlette:
    """Build the ASGI app. The keyword arguments default to what ``settings`` and the
    installed entry points say; they are parameters so tests can hand in their own."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.ring = ring or KeyRing.load(settings.keys_file, settings.keys)
        if providers is None:
            app.state.providers, app.state.clients = registry.load_configured(settings)
        else:
            app.state.providers, app.state.clients = providers, clients or {}
        app.state.engine = create_engine(settings.database_url)
        app.state.sessions = sessionmaker(app.state.engine)
        app.state.state_store = state_store or open_state(settings.redis_url)
        # One pooled client for provider calls; it follows no redirects, so a credential
        # is never carried to a host the declaration did not name.
        app.state.http = httpx2.AsyncClient(timeout=settings.provider_timeout,
                                            follow_redirects=False, trust_env=False)
        try:
            yield
        finally:
            await app.state.http.aclose()
            await app.state.state_store.close()
            await app.state.engine.dispose()

    return Starlette(
        routes=routes(),
        middleware=[Middleware(RequestContext)],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )
