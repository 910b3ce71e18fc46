"""Fake third-party providers in one Starlette app, each under its own path prefix.

``make_app()`` returns the app and the ``FakeState`` its handlers share: knobs a test sets, and a
record of every request the broker made. Wire formats follow the providers' documentation:

- ``/oauth2/``: a generic authorization server.
  RFC 6749 (https://www.rfc-editor.org/rfc/rfc6749): authorization code grant (4.1), client
  authentication (2.3.1), token and error responses (5.1, 5.2), refresh (6).
  RFC 7636 (https://www.rfc-editor.org/rfc/rfc7636): PKCE, S256 and plain.
  RFC 7009 (https://www.rfc-editor.org/rfc/rfc7009): token revocation.
  RFC 6750 (https://www.rfc-editor.org/rfc/rfc6750): bearer tokens at ``/oauth2/userinfo``.
- ``/shopify/{shop}/admin/``: Shopify's authorization code grant, where ``{shop}`` is the full
  shop domain (``acme.myshopify.com``).
  https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens/authorization-code-grant
  https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens/offline-access-tokens
  https://shopify.dev/changelog/more-resilient-refreshes-for-expiring-offline-access-tokens
- ``/postmark/server``: https://postmarkapp.com/developer/api/server-api (401 bodies as Postmark
  sends them, see ``POSTMARK_MISSING`` and ``POSTMARK_INVALID``).
- ``/mailgun/v4/domains``:
  https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/domains/get-v4-domains
- ``/app/done``: the product app's page, where the broker sends the browser after an install.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

CLIENT_ID = "fake-client-id"
CLIENT_SECRET = "fake-client-secret"
POSTMARK_TOKEN = "11111111-2222-3333-4444-555555555555"
MAILGUN_KEY = "key-good-0123456789abcdef"

TOKEN_MODES = ("ok", "server_error", "hang", "invalid_grant", "not_json", "no_access_token", "slow")
CLIENT_AUTH_METHODS = ("any", "client_secret_basic", "client_secret_post")

# Shopify's own shop-domain check (shopify-api-js lib/utils/shop-validator.ts).
SHOP_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9-]*\.myshopify\.com")
# RFC 7636 4.1: 43-128 characters from the unreserved set.
VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")

# Postmark's error code 10 ("Bad or missing API token"); the messages are the ones its API
# returns (seen in client libraries and their tests, not printed in the docs).
POSTMARK_MISSING = ("No Account or Server API tokens were supplied in the HTTP headers. Please add "
                    "a header for either X-Postmark-Server-Token or X-Postmark-Account-Token.")
POSTMARK_INVALID = ("The Server Token you provided in the X-Postmark-Server-Token request header "
                    "was invalid. Please verify that you are using a valid token.")
# Shopify Admin API answer to a missing or unknown X-Shopify-Access-Token.
SHOPIFY_BAD_TOKEN = "[API] Invalid API key or access token (unrecognized login or wrong password)"


@dataclass
class Grant:
    """What an authorization code stands for."""

    client_id: str
    redirect_uri: str
    scope: str
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    shop: str | None = None
    online: bool = False  # Shopify grant_options[]=per-user
    used: bool = False


@dataclass
class FakeState:
    """Knobs and records shared by the fakes.

    Handlers run on the server thread and only append to lists and set dict keys, which is
    atomic under the GIL, so tests may read the records from the main thread at any time.
    """

    # Knobs. One client registration, used by every OAuth fake.
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    auto_approve: bool = False  # authorize redirects straight back as if "Approve" was pressed
    accept_json: bool = False  # generic token endpoint also takes application/json bodies
    client_auth_method: str = "any"  # one of CLIENT_AUTH_METHODS
    token_mode: str = "ok"  # one of TOKEN_MODES; applies to the generic and Shopify token endpoints
    hang_seconds: float = 30.0
    slow_seconds: float = 1.0
    granted_scope: str | None = None  # generic: scope to grant instead of the requested one
    shopify_granted_scope: str | None = None  # e.g. Shopify collapsing read_x into write_x
    shopify_tamper_hmac: bool = False  # callback carries an hmac that does not verify
    shopify_timestamp_offset: int = 0  # seconds added to the callback timestamp
    postmark_tokens: set[str] = field(default_factory=lambda: {POSTMARK_TOKEN})
    # Put into every code and token the generic server mints, after its "code-"/"at-"/"rt-"
    # prefix: a log sweep then catches a fragment of one, not only the whole value.
    mint_marker: str = ""
    mailgun_keys: set[str] = field(default_factory=lambda: {MAILGUN_KEY})

    # Records, oldest first.
    authorize_requests: list[dict[str, str]] = field(default_factory=list)  # generic: the query
    token_requests: list[dict[str, Any]] = field(default_factory=list)  # generic
    revoke_requests: list[dict[str, Any]] = field(default_factory=list)
    shopify_authorize_requests: list[dict[str, str]] = field(default_factory=list)
    shopify_token_requests: list[dict[str, Any]] = field(default_factory=list)
    # API calls (userinfo, Shopify GraphQL, Postmark, Mailgun): provider, method, path, query,
    # headers, raw body.
    api_requests: list[dict[str, Any]] = field(default_factory=list)
    returns: list[dict[str, str]] = field(default_factory=list)  # /app/done queries

    # Issued credentials (the fakes' "database").
    codes: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, str] = field(default_factory=dict)  # token -> scope
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # live token -> scope
    shopify_codes: dict[str, Grant] = field(default_factory=dict)
    shopify_access_tokens: dict[str, str] = field(default_factory=dict)  # token -> shop
    shopify_refresh_tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    generation: int = 0  # bumped by reset(); a "hang" handler returns when it changes

    def reset(self) -> None:
        """Restore every knob, forget every record and credential, release hanging handlers."""
        generation = self.generation + 1
        self.__dict__.update(FakeState().__dict__)
        self.generation = generation


def make_app() -> tuple[Starlette, FakeState]:
    state = FakeState()
    app = Starlette(routes=[
        Route("/oauth2/authorize", authorize),
        Route("/oauth2/consent", consent, methods=["POST"]),
        Route("/oauth2/token", token, methods=["POST"]),
        Route("/oauth2/revoke", revoke, methods=["POST"]),
        Route("/oauth2/userinfo", userinfo),
        Route("/shopify/{shop}/admin/oauth/authorize", shopify_authorize),
        Route("/shopify/{shop}/admin/oauth/consent", shopify_consent, methods=["POST"]),
        Route("/shopify/{shop}/admin/oauth/access_token", shopify_access_token, methods=["POST"]),
        Route("/shopify/{shop}/admin/api/{version}/graphql.json", shopify_graphql,
              methods=["POST"]),
        Route("/postmark/server", postmark_server),
        Route("/mailgun/v4/domains", mailgun_domains),
        Route("/app/done", app_done),
    ])
    app.state.fake = state
    return app, state


# --- shared helpers ---------------------------------------------------------------------------

def _state(request: Request) -> FakeState:
    return request.app.state.fake


def _new_token(prefix: str, state: FakeState) -> str:
    return prefix + state.mint_marker + secrets.token_urlsafe(24)


def _with_query(url: str, params: dict[str, str]) -> str:
    # RFC 6749 3.1.2: a query already on the redirect URI must be kept.
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redirect(url: str) -> RedirectResponse:
    # 302 as in RFC 6749 4.1.2; Starlette's default 307 would re-POST the consent form.
    return RedirectResponse(url, status_code=302)


def _oauth_error(status: int, error: str, description: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status,
                        headers={"Cache-Control": "no-store", **headers})


def _invalid_client(problem: str) -> JSONResponse:
    # RFC 6749 5.2: 401 with WWW-Authenticate when the client tried Basic; harmless otherwise.
    challenge = {"WWW-Authenticate": 'Basic realm="fake"'}
    return _oauth_error(401, "invalid_client", problem, **challenge)


def _token_response(body: dict[str, Any]) -> JSONResponse:
    # RFC 6749 5.1: token responses must not be cached.
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def _record_body(request: Request, into: list[dict[str, Any]]) -> dict[str, Any]:
    """Parse a token request body (form or JSON) and record the request before any decision."""
    raw = (await request.body()).decode("utf-8", "replace")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body: dict[str, Any] = {}
    if content_type == "application/x-www-form-urlencoded":
        body = dict(parse_qsl(raw, keep_blank_values=True))
    elif content_type == "application/json":
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else {}
    record = {"method": request.method, "path": request.url.path, "headers": dict(request.headers),
              "content_type": content_type, "body": body, "raw": raw,
              "grant_type": body.get("grant_type")}
    into.append(record)
    return record


def _record_api(request: Request, provider: str, raw: str = "") -> None:
    _state(request).api_requests.append({
        "provider": provider, "method": request.method, "path": request.url.path,
        "query": dict(request.query_params), "headers": dict(request.headers), "body": raw})


async def _forced_outcome(state: FakeState) -> Response | None:
    """The response ``token_mode`` forces, or None to go on with the real exchange."""
    mode = state.token_mode
    if mode == "ok":
        return None
    if mode == "slow":
        await asyncio.sleep(state.slow_seconds)
        return None
    if mode == "hang":
        # Short sleeps, so reset() (a new generation) lets the handler go and shutdown is prompt.
        generation, deadline = state.generation, time.monotonic() + state.hang_seconds
        while state.generation == generation and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return PlainTextResponse("Gateway Timeout", 504)
    if mode == "server_error":
        return PlainTextResponse("Internal Server Error", 500)
    if mode == "invalid_grant":
        return _oauth_error(400, "invalid_grant", "token_mode=invalid_grant")
    if mode == "not_json":
        return HTMLResponse("<!doctype html><title>Sign in</title><p>Please sign in.</p>")
    if mode == "no_access_token":
        return _token_response({"token_type": "Bearer", "expires_in": 3600})
    return PlainTextResponse(f"unknown token_mode {mode!r}; use one of {TOKEN_MODES}", 500)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """HTTP Basic credentials, or None. RFC 6749 2.3.1: id and secret are form-urlencoded first."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:
        return ("", "")
    user, _, password = decoded.partition(":")
    return unquote_plus(user), unquote_plus(password)


def _consent_page(action: str, query: dict[str, str], title: str) -> HTMLResponse:
    """Consent screen without external resources; the form posts the original query back."""
    hidden = "\n".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in query.items())
    scope = html.escape(query.get("scope", ""))
    client = html.escape(query.get("client_id", ""))
    return HTMLResponse(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>
<body><h1>{html.escape(title)}</h1>
<p>The app <b id="client">{client}</b> asks for: <code id="scope">{scope}</code></p>
<form method="post" action="{html.escape(action)}">
{hidden}
<button id="approve" name="decision" value="approve">Approve</button>
<button id="deny" name="decision" value="deny">Deny</button>
</form></body></html>""")


async def _consent_form(request: Request) -> tuple[str, dict[str, str]]:
    form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
    return form.pop("decision", ""), form


def _deny(query: dict[str, str]) -> RedirectResponse:
    params = {"error": "access_denied", "error_description": "The user denied the request."}
    if "state" in query:
        params["state"] = query["state"]
    return _redirect(_with_query(query["redirect_uri"], params))


# --- generic RFC 6749 / 7636 authorization server ----------------------------------------------

def _authorize_problem(query: dict[str, str], state: FakeState) -> str | None:
    # These errors must not redirect (RFC 6749 4.1.2.1 for client_id and redirect_uri).
    if query.get("client_id") != state.client_id:
        return "unknown client_id"
    if not query.get("redirect_uri"):
        return "redirect_uri is required"
    if query.get("response_type") != "code":
        return "response_type must be code"
    if "code_challenge" in query and query.get("code_challenge_method", "plain") not in (
            "S256", "plain"):
        return "code_challenge_method must be S256 or plain"
    return None


def _approve(query: dict[str, str], state: FakeState) -> RedirectResponse:
    code = _new_token("code-", state)
    state.codes[code] = Grant(
        client_id=query["client_id"], redirect_uri=query["redirect_uri"],
        scope=query.get("scope", ""), code_challenge=query.get("code_challenge"),
        code_challenge_method=query.get("code_challenge_method"))
    params = {"code": code}
    if "state" in query:  # echoed exactly, omitted when absent (RFC 6749 4.1.2)
        params["state"] = query["state"]
    return _redirect(_with_query(query["redirect_uri"], params))


async def authorize(request: Request) -> Response:
    state = _state(request)
    query = dict(request.query_params)
    state.authorize_requests.append(query)
    if problem := _authorize_problem(query, state):
        return PlainTextResponse(f"Bad authorization request: {problem}", 400)
    if state.auto_approve:
        return _approve(query, state)
    return _consent_page("/oauth2/consent", query, "Authorize fake app")


async def consent(request: Request) -> Response:
    state = _state(request)
    decision, query = await _consent_form(request)
    if problem := _authorize_problem(query, state):
        return PlainTextResponse(f"Bad authorization request: {problem}", 400)
    return _approve(query, state) if decision == "approve" else _deny(query)


def _client_auth_problem(request: Request, body: dict[str, str], state: FakeState) -> str | None:
    basic = _basic_credentials(request)
    if basic and "client_secret" in body:
        return "more than one client authentication method"  # RFC 6749 2.3
    if basic:
        method, (client_id, secret) = "client_secret_basic", basic
        if body.get("client_id", client_id) != client_id:
            return "client_id in the body differs from the Basic one"
    elif "client_secret" in body:
        method = "client_secret_post"
        client_id, secret = body.get("client_id"), body["client_secret"]
    else:
        return "no client authentication"
    if state.client_auth_method not in ("any", method):
        return f"{method} is not allowed for this client"
    if (client_id, secret) != (state.client_id, state.client_secret):
        return "bad client credentials"
    return None


def _pkce_ok(grant: Grant, verifier: str | None) -> bool:
    if grant.code_challenge is None:
        return True  # no challenge at authorize time: a verifier, if sent, is ignored
    if verifier is None or not VERIFIER_RE.fullmatch(verifier):
        return False
    if (grant.code_challenge_method or "plain") == "plain":  # RFC 7636 4.3 default
        return hmac.compare_digest(verifier, grant.code_challenge)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return hmac.compare_digest(expected, grant.code_challenge)


def _issue(state: FakeState, scope: str) -> JSONResponse:
    access, refresh = _new_token("at-", state), _new_token("rt-", state)
    state.access_tokens[access] = scope
    state.refresh_tokens[refresh] = scope
    body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": 3600,
                            "refresh_token": refresh}
    if scope:  # RFC 6749 5.1: scope is optional; sent when there is one
        body["scope"] = scope
    return _token_response(body)


async def token(request: Request) -> Response:
    state = _state(request)
    record = await _record_body(request, state.token_requests)
    if forced := await _forced_outcome(state):
        return forced
    if record["content_type"] != "application/x-www-form-urlencoded" and not (
            record["content_type"] == "application/json" and state.accept_json):
        return _oauth_error(400, "invalid_request",
                            "body must be application/x-www-form-urlencoded")
    body = {k: str(v) for k, v in record["body"].items()}
    if problem := _client_auth_problem(request, body, state):
        return _invalid_client(problem)

    grant_type = body.get("grant_type")
    if grant_type == "authorization_code":
        grant = state.codes.get(body.get("code", ""))
        if grant is None or grant.used:
            return _oauth_error(400, "invalid_grant", "unknown or already used code")
        grant.used = True  # single use, even when a later check fails (RFC 6749 4.1.2)
        if body.get("redirect_uri") != grant.redirect_uri:
            return _oauth_error(400, "invalid_grant", "redirect_uri differs from the authorize one")
        if not _pkce_ok(grant, body.get("code_verifier")):
            return _oauth_error(400, "invalid_grant", "PKCE verification failed")
        granted = grant.scope if state.granted_scope is None else state.granted_scope
        return _issue(state, granted)
    if grant_type == "refresh_token":
        refresh = body.get("refresh_token", "")
        if refresh not in state.refresh_tokens:
            return _oauth_error(400, "invalid_grant", "unknown, used or revoked refresh token")
        # Rotation: every refresh token is single use.
        return _issue(state, state.refresh_tokens.pop(refresh))
    if grant_type is None:
        return _oauth_error(400, "invalid_request", "grant_type is required")
    return _oauth_error(400, "unsupported_grant_type", f"{grant_type} is not supported")


async def revoke(request: Request) -> Response:
    state = _state(request)
    record = await _record_body(request, state.revoke_requests)
    body = {k: str(v) for k, v in record["body"].items()}
    if problem := _client_auth_problem(request, body, state):
        return _invalid_client(problem)
    # RFC 7009 2.2: 200 whether or not the token was valid.
    state.access_tokens.pop(body.get("token", ""), None)
    state.refresh_tokens.pop(body.get("token", ""), None)
    return Response(status_code=200)


async def userinfo(request: Request) -> Response:
    state = _state(request)
    _record_api(request, "oauth2")
    scheme, _, access = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or access.strip() not in state.access_tokens:
        return JSONResponse({"error": "invalid_token"}, 401,
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return JSONResponse({"id": "user-1"})


# --- Shopify -----------------------------------------------------------------------------------

def shopify_hmac(params: dict[str, str], secret: str) -> str:
    """Shopify's callback signature: every parameter but ``hmac`` (and the legacy ``signature``),
    sorted by key, ``key=value`` joined with ``&``, HMAC-SHA256 with the client secret, hex.

    Per Shopify's docs, ``%`` and ``&`` are escaped in keys and values and ``=`` in keys; values
    are otherwise used as sent (not URL-encoded).
    """
    def esc(text: str, is_key: bool) -> str:
        text = text.replace("%", "%25").replace("&", "%26")
        return text.replace("=", "%3D") if is_key else text

    message = "&".join(f"{esc(k, True)}={esc(v, False)}" for k, v in sorted(params.items())
                       if k not in ("hmac", "signature"))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _shopify_problem(shop: str, query: dict[str, str], state: FakeState) -> str | None:
    if not SHOP_RE.fullmatch(shop):
        return "not a myshopify.com shop domain"
    if query.get("client_id") != state.client_id:
        return "unknown client_id"
    if not query.get("redirect_uri"):
        return "redirect_uri is required"
    return None


def _shopify_approve(shop: str, query: dict[str, str], state: FakeState) -> RedirectResponse:
    code = secrets.token_hex(16)
    state.shopify_codes[code] = Grant(
        client_id=query["client_id"], redirect_uri=query["redirect_uri"],
        scope=query.get("scope", ""), shop=shop,
        online=query.get("grant_options[]") == "per-user")
    params = {
        "code": code,
        # host: base64 of "<shop>/admin", padding stripped as Shopify sends it.
        "host": base64.b64encode(f"{shop}/admin".encode()).decode().rstrip("="),
        "shop": shop,
        "timestamp": str(int(time.time()) + state.shopify_timestamp_offset),
    }
    if "state" in query:
        params["state"] = query["state"]
    # The signature covers every parameter of the callback, a query on redirect_uri included,
    # so a broker can verify what it receives without knowing which parameters Shopify added.
    signed_params = {**dict(parse_qsl(urlsplit(query["redirect_uri"]).query)), **params}
    secret = state.client_secret + ("-tampered" if state.shopify_tamper_hmac else "")
    signed = shopify_hmac(signed_params, secret)
    # Shopify sends the parameters in alphabetical order, hmac included.
    callback = dict(sorted({**params, "hmac": signed}.items()))
    return _redirect(_with_query(query["redirect_uri"], callback))


async def shopify_authorize(request: Request) -> Response:
    state, shop = _state(request), request.path_params["shop"]
    query = dict(request.query_params)
    state.shopify_authorize_requests.append(query)
    if problem := _shopify_problem(shop, query, state):
        return PlainTextResponse(f"Oauth error invalid_request: {problem}", 400)
    if state.auto_approve:
        return _shopify_approve(shop, query, state)
    return _consent_page(f"/shopify/{shop}/admin/oauth/consent", query, f"Install app on {shop}")


async def shopify_consent(request: Request) -> Response:
    state, shop = _state(request), request.path_params["shop"]
    decision, query = await _consent_form(request)
    if problem := _shopify_problem(shop, query, state):
        return PlainTextResponse(f"Oauth error invalid_request: {problem}", 400)
    return _shopify_approve(shop, query, state) if decision == "approve" else _deny(query)


def _shopify_tokens(state: FakeState, shop: str, scope: str, *, expiring: bool,
                    replaces: str = "") -> dict[str, Any]:
    access = "shpat_" + secrets.token_hex(16)
    state.shopify_access_tokens[access] = shop
    body: dict[str, Any] = {"access_token": access, "scope": scope}  # no token_type at Shopify
    if expiring:
        refresh = "shprt_" + secrets.token_hex(16)
        state.shopify_refresh_tokens[refresh] = {"shop": shop, "scope": scope, "replaces": replaces}
        body.update(expires_in=3600, refresh_token=refresh, refresh_token_expires_in=7776000)
    return body


async def shopify_access_token(request: Request) -> Response:
    state, shop = _state(request), request.path_params["shop"]
    record = await _record_body(request, state.shopify_token_requests)
    if forced := await _forced_outcome(state):
        return forced
    body = {k: str(v) for k, v in record["body"].items()}  # Shopify takes form or JSON
    # Shopify takes the client credentials in the body only (client_secret_post).
    if (body.get("client_id"), body.get("client_secret")) != (state.client_id, state.client_secret):
        return _oauth_error(400, "invalid_request", "client_id or client_secret is invalid")

    if body.get("grant_type") == "refresh_token":
        refresh = body.get("refresh_token", "")
        info = state.shopify_refresh_tokens.get(refresh)
        if info is None or info["shop"] != shop:
            return _oauth_error(400, "invalid_grant", "refresh token is invalid")
        # Rotation, with Shopify's grace: a refresh token keeps working until its replacement is
        # first used, so using this one retires the one it replaced.
        state.shopify_refresh_tokens.pop(info["replaces"], None)
        return _token_response(_shopify_tokens(state, shop, info["scope"], expiring=True,
                                               replaces=refresh))

    grant = state.shopify_codes.get(body.get("code", ""))
    if grant is None or grant.used or grant.shop != shop:
        return _oauth_error(400, "invalid_request",
                            "The authorization code was not found or was already used")
    grant.used = True
    scope = grant.scope if state.shopify_granted_scope is None else state.shopify_granted_scope
    tokens = _shopify_tokens(state, shop, scope, expiring=body.get("expiring") == "1")
    if grant.online:  # online (per-user) access token
        tokens.update(expires_in=86399, associated_user_scope=scope, associated_user={
            "id": 902541635, "first_name": "John", "last_name": "Smith",
            "email": "john@example.com", "email_verified": True, "account_owner": True,
            "locale": "en", "collaborator": False})
    return _token_response(tokens)


async def shopify_graphql(request: Request) -> Response:
    state, shop = _state(request), request.path_params["shop"]
    _record_api(request, "shopify", (await request.body()).decode("utf-8", "replace"))
    if state.shopify_access_tokens.get(request.headers.get("x-shopify-access-token", "")) != shop:
        return JSONResponse({"errors": SHOPIFY_BAD_TOKEN}, 401)
    return JSONResponse({
        "data": {"shop": {"name": shop.split(".")[0].title(), "myshopifyDomain": shop}},
        "extensions": {"cost": {"requestedQueryCost": 1, "actualQueryCost": 1}}})


# --- API-key providers and the product app -----------------------------------------------------

async def postmark_server(request: Request) -> Response:
    state = _state(request)
    _record_api(request, "postmark")
    server_token = request.headers.get("x-postmark-server-token")
    if server_token is None:
        return JSONResponse({"ErrorCode": 10, "Message": POSTMARK_MISSING}, 401)
    if server_token not in state.postmark_tokens:
        return JSONResponse({"ErrorCode": 10, "Message": POSTMARK_INVALID}, 401)
    return JSONResponse({
        "ID": 1, "Name": "Fake Server", "ApiTokens": [server_token], "Color": "Purple",
        "SmtpApiActivated": True, "RawEmailEnabled": False, "DeliveryType": "Live",
        "ServerLink": "https://account.postmarkapp.com/servers/1/streams",
        "InboundAddress": "fakehash@inbound.postmarkapp.com", "InboundHookUrl": "",
        "BounceHookUrl": "", "OpenHookUrl": "", "DeliveryHookUrl": "", "PostFirstOpenOnly": False,
        "InboundDomain": "", "InboundHash": "fakehash", "InboundSpamThreshold": 0,
        "TrackOpens": False, "TrackLinks": "None", "IncludeBounceContentInHook": True,
        "ClickHookUrl": "", "EnableSmtpApiErrorHooks": False})


async def mailgun_domains(request: Request) -> Response:
    state = _state(request)
    _record_api(request, "mailgun")
    basic = _basic_credentials(request)
    if basic is None or basic[0] != "api" or basic[1] not in state.mailgun_keys:
        return JSONResponse({"message": "Invalid private key"}, 401,
                            headers={"WWW-Authenticate": 'Basic realm="MG API"'})
    return JSONResponse({"total_count": 1, "items": [{
        "created_at": "Thu, 13 Oct 2011 18:02:00 GMT", "id": "123456789012345678901234",
        "is_disabled": False, "name": "mg.example.com", "require_tls": True,
        "skip_verification": False, "smtp_login": "postmaster@mg.example.com",
        "spam_action": "disabled", "state": "active", "type": "custom", "web_prefix": "email",
        "web_scheme": "https", "wildcard": False}]})


async def app_done(request: Request) -> Response:
    query = dict(request.query_params)
    _state(request).returns.append(query)
    status, provider = html.escape(query.get("status", "")), html.escape(query.get("provider", ""))
    return HTMLResponse(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Done</title></head>
<body><h1 id="result">{status}</h1><p id="provider">{provider}</p></body></html>""")
