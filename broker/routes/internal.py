"""The internal API for the main API (``/internal/v1``), authenticated by service token."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from starlette.responses import Response

from broker import connect, store
from broker.auth import ServiceCtx
from broker.credentials_form import check_inputs
from broker.errors import NotFound, Unprocessable
from broker.http import ok, read_json
from broker.routes.api import check_return_url


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
    provider = ctx.request.app.state.providers.get(body.get("provider"))
    if not isinstance(body.get("provider"), str) or provider is None:
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
               "expires_at": expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
              status=201)
