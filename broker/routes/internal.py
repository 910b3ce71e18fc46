"""The internal API for the main API (``/internal/v1``), authenticated by service token."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from starlette.responses import Response

from broker import connect, lifecycle, store
from broker.auth import ServiceCtx
from broker.credentials_form import check_inputs
from broker.db import iso
from broker.errors import NotFound, Unprocessable
from broker.http import ok, read_json
from broker.models import AuditEvent, Integration
from broker.routes.api import catalog_provider, check_return_url, disconnect, integration_json
from broker.spec import Provider


async def create_connect_session(ctx: ServiceCtx) -> Response:
    """A single-use, 10-minute link that starts an install in a browser."""
    project = ctx.request.path_params["projectId"]
    if not store.PROJECT_ID.match(project):
        raise NotFound("No such project.")
    settings = ctx.request.app.state.settings
    body = await read_json(ctx.request, settings.max_body_bytes)
    if not isinstance(body, dict):
        raise Unprocessable("The body must be a JSON object.")
    unknown = sorted(set(body) - {"provider", "return_url", "params"})
    if unknown:
        raise Unprocessable(f"Unknown field(s): {', '.join(unknown)}.", code="unknown_field")
    slug = body.get("provider")
    provider = ctx.request.app.state.providers.get(slug) if isinstance(slug, str) else None
    if provider is None:
        raise Unprocessable("provider must name a provider in the catalog.",
                            code="unknown_provider")
    params: Any = body.get("params") or {}
    plain = {f.name for f in provider.fields if not f.secret}
    if not isinstance(params, dict) or not all(
            k in plain and isinstance(v, str) for k, v in params.items()):
        raise Unprocessable(f"params may only pre-fill {', '.join(sorted(plain)) or 'nothing'}"
                            " with strings.")
    declared = tuple(f for f in provider.fields if f.name in params)
    values, errors = check_inputs(declared, params)
    if errors:
        raise Unprocessable("; ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
    return_url = check_return_url(body.get("return_url"), settings.return_url_allowlist)
    await store.ensure_project(ctx.session, project)
    token, expires_at = await connect.create_session(
        ctx.session, project_id=project, provider=provider.slug, return_url=return_url,
        params=values)
    await ctx.session.commit()
    return ok({"connect_url": f"{settings.public_url}/connect/{token}",
               "expires_at": iso(expires_at)},
              status=201)


ACTING_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() also accepts "¹"


def _project(ctx: ServiceCtx) -> str:
    project = ctx.request.path_params["projectId"]
    if not store.PROJECT_ID.match(project):
        raise NotFound("No such project.")
    return project


def _actor(ctx: ServiceCtx) -> lifecycle.Actor:
    """The API key the main API acted for (``X-Acting-Key-Id``), for the audit record."""
    acting = ctx.request.headers.get("x-acting-key-id")
    if acting is not None and not ACTING_KEY.match(acting):
        raise Unprocessable("X-Acting-Key-Id must be an API key id (ak_...).")
    return lifecycle.Actor(acting, ctx.request_id)


async def get_credentials(ctx: ServiceCtx) -> Response:
    """A usable credential for the main API to call the provider with."""
    if ctx.request.query_params:
        raise Unprocessable("This endpoint takes no query parameters.")
    project = _project(ctx)
    provider = catalog_provider(ctx.request.app.state.providers,
                                ctx.request.path_params["provider"])
    body = await ctx.request.app.state.credentials.handout(project, provider.slug, ctx.token_id)
    return ok(body)


def _provider(ctx: ServiceCtx) -> Provider:
    return catalog_provider(ctx.request.app.state.providers, ctx.request.path_params["provider"])


async def _integration(ctx: ServiceCtx) -> tuple[Provider, Integration]:
    provider = _provider(ctx)
    found = await store.get_integration(ctx.session, _project(ctx), provider.slug,
                                        for_update=True)
    if found is None:
        raise NotFound(f"{provider.name} is not installed in this project.")
    return provider, found


async def update_lifecycle(ctx: ServiceCtx) -> Response:
    actor = _actor(ctx)
    provider = _provider(ctx)
    body = await read_json(ctx.request, ctx.request.app.state.settings.max_body_bytes)
    changes = lifecycle.validate_patch(body, provider)
    _, integration = await _integration(ctx)
    await lifecycle.update(ctx.session, integration, changes, actor)
    await ctx.session.commit()
    return ok(integration_json(integration))


async def disconnect_integration(ctx: ServiceCtx) -> Response:
    actor = _actor(ctx)
    unknown = set(ctx.request.query_params) - {"revoke"}
    revoke = ctx.request.query_params.get("revoke", "false")
    if unknown or revoke not in ("true", "false"):
        raise Unprocessable("The only query parameter is revoke=true|false.")
    _, integration = await _integration(ctx)
    return ok(await disconnect(ctx.request, ctx.session, integration, actor,
                               revoke=revoke == "true"))


async def list_audit(ctx: ServiceCtx) -> Response:
    """The project's audit events, newest first; page with ``before`` (an event id)."""
    project = _project(ctx)
    params = ctx.request.query_params
    if set(params) - {"limit", "before"}:
        raise Unprocessable("Query parameters are limit and before.")
    limit, before = params.get("limit", "50"), params.get("before")
    if not DIGITS.fullmatch(limit) or not 1 <= int(limit) <= 200:
        raise Unprocessable("limit must be 1-200.")
    if before is not None and not DIGITS.fullmatch(before):
        raise Unprocessable("before must be an event id.")
    query = (select(AuditEvent).where(AuditEvent.project_id == project)
             .order_by(AuditEvent.id.desc()).limit(int(limit)))
    if before is not None:
        query = query.where(AuditEvent.id < int(before))
    events = list(await ctx.session.scalars(query))
    return ok([{"id": e.id, "type": e.type, "provider": e.provider,
                "integration_id": e.integration_id, "actor_key_id": e.actor_key_id,
                "request_id": e.request_id, "details": e.details,
                "created_at": iso(e.created_at)} for e in events])
