"""The v1 Integrations API (``/v1/projects/{projectId}/integrations``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.responses import Response

from broker import catalog, connect, lifecycle, store
from broker.auth import Ctx
from broker.credentials import revoke_at_provider
from broker.db import iso
from broker.errors import NotFound, Unprocessable
from broker.http import ok, read_json
from broker.models import Credential, Integration
from broker.spec import SLUG, Provider

INSTALL_MESSAGES = {
    "oauth": "Open the URL above in a browser to complete installation.",
    "api_key": "Open the URL above in a browser to enter the API key.",
    "basic": "Open the URL above in a browser to enter the credentials.",
    "webhook": "Open the URL above in a browser to enter the webhook URL.",
}
MAX_SLUG = 64  # the width of the provider columns


def integration_json(i: Integration) -> dict[str, Any]:
    """The public integration object: facts and settings, never a secret."""
    return {
        "id": i.id,
        "provider": i.provider,
        "status": i.status,
        "display_name": i.display_name,
        "setup_type": i.setup_type,
        "health_status": i.health_status,
        "sidebar_enabled": i.sidebar_enabled,
        "last_synced_at": iso(i.last_synced_at),
        "error_message": i.error_message,
        "created_at": iso(i.created_at),
        "updated_at": iso(i.updated_at),
        "settings": i.settings,
        "allowed_actions": i.allowed_actions,
        "metadata": i.provider_metadata,
    }


def _no_query(ctx: Ctx, allowed: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(ctx.request.query_params) - set(allowed))
    if unknown:
        raise Unprocessable(f"Unknown query parameter(s): {', '.join(unknown)}.")


def catalog_provider(providers: Mapping[str, Provider], slug: str) -> Provider:
    """The provider a path segment names. A segment that cannot be a provider key (control
    characters, ``/``, ``..``, ``*``, upper case) is refused as invalid (422) before any
    lookup; a well-formed key the catalog lacks is a provider that does not exist (404)."""
    if len(slug) > MAX_SLUG or not SLUG.fullmatch(slug):
        raise Unprocessable("provider must be a provider key: lowercase letters, digits and "
                            f"single hyphens, at most {MAX_SLUG} characters.")
    provider = providers.get(slug)
    if provider is None:
        raise NotFound("No provider with that name in the catalog.")
    return provider


def _provider(ctx: Ctx) -> Provider:
    return catalog_provider(ctx.request.app.state.providers, ctx.request.path_params["provider"])


async def _integration(ctx: Ctx, provider: Provider) -> Integration:
    found = await store.get_integration(ctx.session, ctx.caller.project_id, provider.slug,
                                        for_update=True)
    if found is None:
        raise NotFound(f"{provider.name} is not installed in this project.")
    return found


async def list_integrations(ctx: Ctx) -> Response:
    """The project's integrations in every status, disconnected ones included."""
    _no_query(ctx)
    rows = await store.list_integrations(ctx.session, ctx.caller.project_id)
    return ok([integration_json(i) for i in rows])


async def get_catalog(ctx: Ctx) -> Response:
    q, category, status = catalog.check_filters(ctx.request.query_params)
    rows = await store.list_integrations(ctx.session, ctx.caller.project_id)
    return ok(catalog.search(ctx.request.app.state.providers, rows,
                             q=q, category=category, status=status))


async def get_catalog_entry(ctx: Ctx) -> Response:
    _no_query(ctx)
    provider = _provider(ctx)
    found = await store.get_integration(ctx.session, ctx.caller.project_id, provider.slug)
    return ok(catalog.entry(provider, found))


def check_return_url(url: Any, allowlist: tuple[str, ...]) -> str | None:
    """A return URL whose scheme, host and port are exactly those of an allow-listed URL.
    Compared on the parsed form (after rejecting anything a browser could read otherwise),
    so ``https://allowed@evil``, ``//evil`` and ``https://allowed.evil`` all fail."""
    if url is None:
        return None
    if not isinstance(url, str) or len(url) > 2000:
        raise Unprocessable("return_url must be a URL string.")
    refuse = Unprocessable("return_url is not on BROKER_RETURN_URL_ALLOWLIST.",
                           code="return_url_not_allowed")
    # Browsers strip tabs and newlines and read backslashes as slashes; refuse both.
    if any(c in url for c in "\\\t\r\n ") or any(ord(c) < 32 or ord(c) > 126 for c in url):
        raise refuse
    try:
        # urlsplit refuses an unbalanced IPv6 bracket ("https://host["), .port a bad port.
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse from None
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        raise refuse
    allowed = {(a.scheme, a.hostname, a.port) for a in map(urlsplit, allowlist)}
    if (parts.scheme, parts.hostname, port) not in allowed or parts.netloc.lower() != (
            parts.hostname or "") + (f":{port}" if port else ""):
        raise refuse
    return url


def _return_url(body: Any, allowlist: tuple[str, ...]) -> str | None:
    if body is None:
        return None
    if not isinstance(body, dict) or set(body) - {"return_url"}:
        raise Unprocessable("The body may only hold return_url.")
    return check_return_url(body.get("return_url"), allowlist)


async def create_install_url(ctx: Ctx) -> Response:
    """A URL a person opens to install the provider: the dashboard's when one is
    configured, otherwise the broker's own single-use connect page."""
    _no_query(ctx)
    provider = _provider(ctx)
    settings = ctx.request.app.state.settings
    return_url = _return_url(await read_json(ctx.request, settings.max_body_bytes,
                                             optional=True), settings.return_url_allowlist)
    project = ctx.caller.project_id
    if settings.dashboard_url:
        url = (f"{settings.dashboard_url}/projects/{quote(project)}/integrations/"
               f"{provider.slug}")
    else:
        token, _ = await connect.create_session(ctx.session, project_id=project,
                                                provider=provider.slug, return_url=return_url)
        await ctx.session.commit()
        url = f"{settings.public_url}/connect/{token}"
    return ok({"provider": provider.slug, "install_url": url,
               "setup_type": provider.setup_type,
               "message": INSTALL_MESSAGES[provider.setup_type]})


async def update_lifecycle(ctx: Ctx) -> Response:
    _no_query(ctx)
    provider = _provider(ctx)
    body = await read_json(ctx.request, ctx.request.app.state.settings.max_body_bytes)
    changes = lifecycle.validate_patch(body, provider)
    integration = await _integration(ctx, provider)
    await lifecycle.update(ctx.session, integration, changes,
                           lifecycle.Actor(ctx.caller.key_id, ctx.request_id))
    await ctx.session.commit()
    return ok(integration_json(integration))


async def disconnect_integration(ctx: Ctx) -> Response:
    _no_query(ctx, ("revoke",))
    revoke_param = ctx.request.query_params.get("revoke", "false")
    if revoke_param not in ("true", "false"):
        raise Unprocessable("revoke must be true or false.")
    provider = _provider(ctx)
    integration = await _integration(ctx, provider)
    return ok(await disconnect(ctx.request, ctx.session, integration,
                               lifecycle.Actor(ctx.caller.key_id, ctx.request_id),
                               revoke=revoke_param == "true"))


async def disconnect(request: Any, session: Any, integration: Integration,
                     actor: lifecycle.Actor, *, revoke: bool) -> dict[str, Any]:
    """Disconnect (v1 and internal API): revoke at the provider first when asked, then wipe;
    a failed revocation is reported and audited, and never keeps the credential."""
    revoked: list[str] = []
    problem = None
    if revoke:
        credential = await session.get(Credential, integration.id)
        revoked, problem = await revoke_at_provider(request.app.state, integration, credential)
    await lifecycle.disconnect(session, integration, actor, revoke=revoke, revoked=revoked,
                               revocation_error=problem)
    await session.commit()
    data = integration_json(integration)
    if revoke:
        data["revoked"] = revoked
        data["revocation_error"] = problem
    return data
