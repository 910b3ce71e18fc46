"""Browser routes: the connect page, its form, the OAuth start and the callback.

Every step that continues a flow checks the binding cookie set when this browser opened the
connect link: a callback or form post from another browser is refused, which stops an
attacker from luring a victim into completing the attacker's install.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from broker import checks, connect, flow, installs, limits, pages
from broker.checks import NotVerified, Rejected
from broker.credentials_form import check_inputs, check_webhook_url, secret_and_plain
from broker.db import utcnow
from broker.errors import ApiError
from broker.http import read_form
from broker.logs import request_id_var
from broker.settings import env_slug
from broker.spec import (
    Callback,
    CallbackError,
    Connected,
    OAuth2Provider,
    Provider,
    WebhookProvider,
)
from broker.state import StateUnavailable
from broker.store import Secrets

log = logging.getLogger(__name__)
TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,128}$")
FORM_TTL = 600
MAX_FORM_BYTES = 16 * 1024


def _cookie_name(public_url: str) -> str:
    # __Host- pins the cookie to this host, path / and Secure; plain http (dev) cannot use it.
    return "__Host-broker-bind" if public_url.startswith("https:") else "broker-bind"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _binding(request: Request) -> str | None:
    value = request.cookies.get(_cookie_name(request.app.state.settings.public_url))
    return value if value and TOKEN.match(value) else None


def _bound(request: Request, record: dict[str, Any]) -> bool:
    value = _binding(request)
    return value is not None and hmac.compare_digest(_digest(value), str(record["binding"]))


def _page(request: Request, title: str, text: str, status: int) -> Response:
    return pages.message(title, text, status=status,
                         public_url=request.app.state.settings.public_url)


def _with_cookie(request: Request, response: Response, binding: str) -> Response:
    settings = request.app.state.settings
    response.set_cookie(_cookie_name(settings.public_url), binding, max_age=FORM_TTL, path="/",
                        secure=settings.public_url.startswith("https:"), httponly=True,
                        samesite="lax")
    return response


def _finish(request: Request, record: dict[str, Any], provider: Provider, *, ok: bool,
            reason: str = "", status: int = 200) -> Response:
    """Send the browser back to the session's return URL with the outcome (never a code,
    state or token), or show the outcome here when there is none."""
    return_url = record.get("return_url")
    if return_url:
        parts = urlsplit(return_url)
        outcome = {"status": "success" if ok else "error", "provider": provider.slug}
        if not ok:
            outcome["error"] = reason
        query = "&".join(q for q in (parts.query, urlencode(outcome)) if q)
        target = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
        return RedirectResponse(target, status_code=302, headers=pages.browser_headers(
            request.app.state.settings.public_url))
    if ok:
        return _page(request, f"{provider.name} is connected",
                     "You can close this window and return to the app.", 200)
    # The code (if any) is spent and never retried: the only way on is a new install.
    return _page(request, f"{provider.name} was not connected",
                 f"The install did not complete ({reason}). Restart the install from the "
                 "app.", status)


async def _start_oauth(request: Request, provider: OAuth2Provider, record: dict[str, Any],
                       binding: str) -> Response:
    app = request.app.state
    client = app.clients.get(provider.slug)
    if client is None:
        log.warning("no OAuth client configured", extra={"provider": provider.slug})
        # A configuration gap, not an outage: 409, the provider cannot be installed as is.
        return _page(request, f"{provider.name} is not set up",
                     f"The operator has not configured an OAuth app for {provider.name} "
                     f"(BROKER_{env_slug(provider.slug)}_CLIENT_ID).", 409)
    state, verifier = flow.new_state(), flow.new_verifier() if provider.pkce else None
    # From configuration only, never from request headers: authorize and token requests
    # must carry the same, registered redirect URI.
    redirect_uri = f"{app.settings.public_url}/oauth/{provider.slug}/callback"
    await app.state_store.put("oauth", state, {
        **record, "verifier": verifier, "redirect_uri": redirect_uri,
        "binding": _digest(binding)}, flow.STATE_TTL)
    url = flow.authorize_url(provider, client, redirect_uri=redirect_uri, state=state,
                             verifier=verifier, inputs=record["inputs"])
    return _with_cookie(request, RedirectResponse(
        url, status_code=302, headers=pages.browser_headers(app.settings.public_url)), binding)


def _form(request: Request, provider: Provider, form_id: str, *, values: dict[str, str],
          errors: dict[str, str], notice: str | None = None, status: int = 200) -> Response:
    return pages.form(provider, action=f"/connect/forms/{form_id}", values=values,
                      errors=errors, notice=notice, status=status,
                      public_url=request.app.state.settings.public_url)


def _unavailable(request: Request) -> Response:
    return _page(request, "Temporarily unavailable",
                 "The broker cannot reach its state store; try again in a moment.", 503)


async def open_connect(request: Request) -> Response:
    """``GET /connect/{session}``: use the single-use link, bind this browser, and go on to
    the provider (OAuth with nothing to ask) or show the form."""
    if await limits.over_browser_limit(request):
        return _page(request, "Too many requests", "Too many requests from this address; "
                     "try again in a minute.", 429)
    token = request.path_params["session"]
    app = request.app.state
    if not TOKEN.match(token):
        return _page(request, "Link not valid", "This connect link is not valid.", 404)
    # The link is single-use: spend it only once the state store answers, so that the retry
    # a 503 invites (Retry-After) still finds it.
    if not await app.state_store.ping():
        return _unavailable(request)
    async with app.sessions() as session:
        found = await connect.consume_session(session, token)
    provider = app.providers.get(found.provider) if found else None
    if found is None or provider is None:
        return _page(request, "Link expired", "This connect link has expired or was already "
                     "used. Start again from the app.", 410)
    binding = _binding(request) or secrets.token_urlsafe(32)
    values, _ = check_inputs(provider.fields, found.params)
    record = {"project_id": found.project_id, "provider": provider.slug,
              "return_url": found.return_url, "inputs": values}
    try:
        if isinstance(provider, OAuth2Provider) and not _missing(provider, values):
            return await _start_oauth(request, provider, record, binding)
        form_id = flow.new_state()
        await app.state_store.put("form", form_id, {**record, "binding": _digest(binding)},
                                  FORM_TTL)
    except StateUnavailable:
        return _unavailable(request)
    return _with_cookie(request, _form(request, provider, form_id, values=values, errors={}),
                        binding)


def _missing(provider: Provider, values: dict[str, str]) -> bool:
    return any(not f.optional and f.name not in values for f in provider.fields)


async def submit_form(request: Request) -> Response:
    """``POST /connect/forms/{form}``: check the typed values; for OAuth go on to the
    provider, otherwise verify the credential with the provider and store it."""
    if await limits.over_browser_limit(request):
        return _page(request, "Too many requests", "Too many requests from this address; "
                     "try again in a minute.", 429)
    form_id = request.path_params["form"]
    app = request.app.state
    try:
        record = await app.state_store.get("form", form_id) if TOKEN.match(form_id) else None
        if record is None or not _bound(request, record):
            return _page(request, "Form expired", "This form has expired or was opened in "
                         "another browser. Start again from the app.", 400)
        provider = app.providers[record["provider"]]
        try:
            typed = await read_form(request, MAX_FORM_BYTES)
        except ApiError:
            return _page(request, "Form not accepted", "The form could not be read.", 400)
        values, errors = check_inputs(provider.fields, typed)
        if isinstance(provider, WebhookProvider):
            for f in provider.fields:
                problem = f.secret and f.name in values and check_webhook_url(
                    values[f.name], allow_private=app.settings.allow_private_webhooks)
                if problem:
                    errors[f.name] = problem
        if errors:
            return _form(request, provider, form_id, values=values, errors=errors, status=422)
        if isinstance(provider, OAuth2Provider):
            if await app.state_store.take("form", form_id) is None:
                return _page(request, "Form expired", "This form was already used.", 400)
            return await _start_oauth(request, provider, {**record, "inputs": values},
                                      _binding(request) or "")
        try:
            await checks.verify(app.http, provider, values)
        except Rejected as exc:
            return _form(request, provider, form_id, values=values, errors={},
                         notice=f"{provider.name} rejected the credential: {exc}", status=422)
        except NotVerified as exc:
            return _form(request, provider, form_id, values=values, errors={},
                         notice=str(exc), status=503)
        if await app.state_store.take("form", form_id) is None:
            return _page(request, "Form expired", "This form was already used.", 400)
    except StateUnavailable:
        return _unavailable(request)
    secret, plain = secret_and_plain(provider, values)
    async with app.sessions() as session:
        await installs.complete(session, app.ring, project_id=record["project_id"],
                                provider=provider, secrets=Secrets(fields=secret),
                                metadata=plain, request_id=request_id_var.get())
    app.metrics.installs.labels(provider.slug, "installed").inc()
    return _finish(request, record, provider, ok=True)


async def _after_connect(app: Any, provider: OAuth2Provider, token: Any,
                         query: list[tuple[str, str]], inputs: dict[str, str]) -> Any:
    assert provider.hooks.after_connect is not None
    headers, _ = checks.presentation(provider, {**inputs, "access_token": token.access_token})
    base = flow.fill(provider.api_base_url or "", inputs)
    async with httpx2.AsyncClient(base_url=base, headers=headers, follow_redirects=False,
                                  trust_env=False,
                                  timeout=app.settings.provider_timeout) as http:
        return await provider.hooks.after_connect(
            Connected(token=token, query=query, inputs=inputs, http=http))


async def oauth_callback(request: Request) -> Response:
    """``GET /oauth/{provider}/callback``: the redirect URI registered at every provider."""
    if await limits.over_browser_limit(request):
        return _page(request, "Too many requests", "Too many requests from this address; "
                     "try again in a minute.", 429)
    app = request.app.state
    query = request.query_params.multi_items()
    states = [v for k, v in query if k == "state"]
    if len(states) != 1 or not TOKEN.match(states[0]):
        return _page(request, "Install not recognised",
                     "The provider's answer has no valid state. Start again from the app.", 400)
    try:
        record = await app.state_store.take("oauth", states[0])
    except StateUnavailable:
        return _unavailable(request)
    # The provider, its endpoints and credentials come from the record, never the URL:
    # an answer delivered to another provider's callback is refused (mix-up defence).
    if record is None or record["provider"] != request.path_params["provider"]:
        return _page(request, "Install not recognised", "This install has expired or was "
                     "already completed. Start again from the app.", 400)
    if not _bound(request, record):
        return _page(request, "Install not recognised", "This install was started in another "
                     "browser. Start again from the app.", 400)
    provider = app.providers[record["provider"]]
    assert isinstance(provider, OAuth2Provider)
    client = app.clients[provider.slug]

    async def fail(reason: str, status: int) -> Response:
        app.metrics.installs.labels(provider.slug, "failed").inc()
        async with app.sessions() as session:
            await installs.record_failure(session, project_id=record["project_id"],
                                          provider=provider.slug, reason=reason,
                                          request_id=request_id_var.get())
        return _finish(request, record, provider, ok=False, reason=reason, status=status)

    # Before anything else, error answers included (RFC 9207 2.4): an answer from another
    # authorization server must not even be shown as that provider's refusal.
    if flow.wrong_issuer(provider, query, record["inputs"]):
        return await fail("invalid_issuer", 400)
    errors = [v for k, v in query if k == "error"]
    if errors:
        code = errors[0] if re.fullmatch(r"[a-z_]{1,64}", errors[0]) else "provider_error"
        return await fail(code, 400)
    codes = [v for k, v in query if k == "code"]
    if len(codes) != 1 or not 0 < len(codes[0]) <= 2048:
        return await fail("invalid_request", 400)
    if provider.hooks.validate_callback is not None:
        try:
            provider.hooks.validate_callback(Callback(
                query=query, client_secret=client.client_secret, inputs=record["inputs"],
                previous_secrets=client.previous_secrets))
        except CallbackError:
            return await fail("invalid_callback", 400)
    started = time.monotonic()
    try:
        token = await flow.exchange(provider, client, code=codes[0],
                                    redirect_uri=record["redirect_uri"],
                                    verifier=record["verifier"], inputs=record["inputs"],
                                    timeout=app.settings.provider_timeout)
    except flow.ExchangeError as exc:
        log.warning("code exchange failed", extra={"provider": provider.slug,
                                                   "reason": exc.code})
        return await fail(exc.code, 502)
    finally:
        app.metrics.provider_calls.labels(provider.slug, "exchange").observe(
            time.monotonic() - started)
    _, plain_inputs = secret_and_plain(provider, record["inputs"])
    extra: dict[str, Any] = {}
    if provider.hooks.after_connect is not None:
        try:
            extra = dict(await _after_connect(app, provider, token, query, record["inputs"]))
        except CallbackError:
            return await fail("install_not_confirmed", 400)
        except httpx2.HTTPError:
            return await fail("unreachable", 502)
    try:
        async with app.sessions() as session:
            await installs.complete(
                session, app.ring, project_id=record["project_id"], provider=provider,
                secrets=Secrets(access_token=token.access_token,
                                refresh_token=token.refresh_token),
                metadata={**plain_inputs, **flow.metadata(provider, token), **extra},
                token_type=token.token_type, scopes=token.scopes,
                expires_at=flow.expires_at(provider, token, utcnow()),
                request_id=request_id_var.get())
    except installs.AccountChanged:
        return await fail("account_mismatch", 409)
    app.metrics.installs.labels(provider.slug, "installed").inc()
    return _finish(request, record, provider, ok=True)
