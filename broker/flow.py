"""OAuth 2.0 authorization-code flow: the authorize URL at start, the code exchange at
callback. Authlib builds the request and authenticates the client; the broker owns the state
record (``broker.state``) and checks the answer (``spec.standard_token`` or the provider's
``parse_token`` hook)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx2
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from broker import logs
from broker.settings import ClientCredentials
from broker.spec import OAuth2Provider, TokenError, TokenResponse, standard_token

log = logging.getLogger(__name__)
STATE_TTL = 600
MAX_TOKEN_RESPONSE = 64 * 1024


class ExchangeError(Exception):
    """The code exchange failed. ``code`` is the provider's OAuth error code, or
    ``timeout`` / ``bad_response`` / ``unreachable``. Messages never quote the response
    body, which may echo secrets: ``facts`` describe it instead (``logs.describe_response``)
    and the message carries them."""

    def __init__(self, code: str, message: str, answer: httpx2.Response | None = None):
        self.facts = logs.describe_response(answer) if answer is not None else {}
        super().__init__(f"{message} ({logs.summary(self.facts)})" if self.facts else message)
        # The code reaches stored error messages and return URLs: a code-shaped value only.
        self.code = code if logs.OAUTH_ERROR.match(code) else "bad_response"


def fill(template: str, inputs: Mapping[str, str]) -> str:
    # Inputs were matched against their field's pattern before they get here.
    return template.format_map(dict(inputs))


def new_state() -> str:
    return secrets.token_urlsafe(32)


def new_verifier() -> str:
    return secrets.token_urlsafe(64)  # 86 characters from 64 random bytes (RFC 7636 4.1)


def authorize_url(provider: OAuth2Provider, client: ClientCredentials, *, redirect_uri: str,
                  state: str, verifier: str | None, inputs: Mapping[str, str]) -> str:
    params: dict[str, str] = dict(provider.authorize_params)
    if provider.scopes:
        params["scope"] = provider.scope_separator.join(provider.scopes)
    if provider.pkce and verifier:
        params["code_challenge"] = create_s256_code_challenge(verifier)
        params["code_challenge_method"] = "S256"
    if provider.hooks.prepare_authorize is not None:
        params = provider.hooks.prepare_authorize(params, inputs)
    return str(prepare_grant_uri(fill(provider.authorize_url, inputs), client.client_id,
                                 "code", redirect_uri=redirect_uri, state=state, **params))


def wrong_issuer(provider: OAuth2Provider, query: Sequence[tuple[str, str]],
                 inputs: Mapping[str, str]) -> bool:
    """RFC 9207 section 2.4: an authorization response whose ``iss`` is not the issuer the
    flow was started with (or lacks one from a provider that always sends it) came from
    another authorization server (a mix-up). Compared as plain strings: no normalisation,
    which could make two issuers equal. An ``iss`` from a provider that declares no issuer
    cannot be checked and is left alone; a repeated one is always refused."""
    given = [v for k, v in query if k == "iss"]
    if len(given) > 1:
        return True
    if provider.issuer is None:
        return False
    if not given:
        return provider.iss_parameter_supported
    return given[0] != fill(provider.issuer, inputs)


def _limit(response: httpx2.Response) -> httpx2.Response:
    if len(response.content) > MAX_TOKEN_RESPONSE:
        raise ValueError("token response too large")
    return response


class _OAuthClient(AsyncOAuth2Client):  # type: ignore[misc]
    """Authlib's client, posting token requests as JSON for providers that declare
    ``token_request_format="json"`` (Authlib itself only sends forms)."""

    def __init__(self, provider: OAuth2Provider, client: ClientCredentials, timeout: float):
        super().__init__(client.client_id, client.client_secret,
                         token_endpoint_auth_method=provider.client_auth_method,
                         timeout=timeout, follow_redirects=False, trust_env=False)
        self._total = timeout
        self._json = provider.token_request_format == "json"
        self.answer: httpx2.Response | None = None  # the token endpoint's, for error reports
        self.register_compliance_hook("access_token_response", self._keep)
        self.register_compliance_hook("refresh_token_response", self._keep)

    def _keep(self, response: httpx2.Response) -> httpx2.Response:
        self.answer = response
        return _limit(response)

    async def post(self, url: Any, *, data: Any = None, headers: Any = None,
                   **kwargs: Any) -> httpx2.Response:
        # httpx bounds the connect and each read, and a read restarts with every byte: a
        # provider dripping its answer would hold the call (and a refresh lock) for ever.
        # The timeout also bounds the request as a whole.
        async with asyncio.timeout(self._total):
            if self._json and data is not None:
                headers = {k: v for k, v in (headers or {}).items()
                           if k.lower() != "content-type"}
                return await super().post(url, json=data, headers=headers, **kwargs)
            return await super().post(url, data=data, headers=headers, **kwargs)


async def _token_call(provider: OAuth2Provider, oauth: _OAuthClient, call: Any
                      ) -> TokenResponse:
    try:
        return await _token_answer(provider, oauth, call)
    except ExchangeError as exc:
        # The one line that describes the provider's answer; callers log the outcome.
        log.warning("token request failed", extra={"provider": provider.slug,
                                                   "reason": exc.code, **exc.facts})
        raise


async def _token_answer(provider: OAuth2Provider, oauth: _OAuthClient, call: Any
                        ) -> TokenResponse:
    try:
        raw = await call
    except AuthlibBaseError as exc:
        raise ExchangeError(str(exc.error or "invalid_grant"),
                            "the provider refused the grant", oauth.answer) from None
    except (httpx2.TimeoutException, TimeoutError):
        raise ExchangeError("timeout", "the provider did not answer in time") from None
    except httpx2.TransportError:
        raise ExchangeError("unreachable", "the provider could not be reached") from None
    except (httpx2.HTTPError, ValueError):
        raise ExchangeError("bad_response", "the provider's answer was not usable",
                            oauth.answer) from None
    parse = provider.hooks.parse_token or (lambda r: standard_token(r, provider.scope_separator))
    try:
        return parse(dict(raw))
    except TokenError as exc:
        # A parser's message may quote the error it found in the body: only a bare one is
        # kept.
        message = "the provider refused the grant" if exc.code else str(exc)
        raise ExchangeError(exc.code or "bad_response", message, oauth.answer) from None


async def exchange(provider: OAuth2Provider, client: ClientCredentials, *, code: str,
                   redirect_uri: str, verifier: str | None, inputs: Mapping[str, str],
                   timeout: float) -> TokenResponse:
    """Trade ``code`` for tokens, once: a failed exchange is never retried, because a
    provider that sees a code twice must refuse it and may revoke what it issued."""
    extra: dict[str, Any] = dict(provider.token_params)
    if provider.pkce and verifier:
        extra["code_verifier"] = verifier
    async with _OAuthClient(provider, client, timeout) as oauth:
        return await _token_call(provider, oauth, oauth.fetch_token(
            fill(provider.token_url, inputs), grant_type="authorization_code", code=code,
            redirect_uri=redirect_uri, **extra))


async def refresh(provider: OAuth2Provider, client: ClientCredentials, *,
                  refresh_token: str, inputs: Mapping[str, str], timeout: float
                  ) -> TokenResponse:
    """Spend ``refresh_token`` once. A response without a new refresh token means the old
    one stays valid (RFC 6749 section 6): Authlib then hands the old one back."""
    async with _OAuthClient(provider, client, timeout) as oauth:
        return await _token_call(provider, oauth, oauth.refresh_token(
            fill(provider.token_url, inputs), refresh_token=refresh_token))


async def revoke(http: httpx2.AsyncClient, provider: OAuth2Provider,
                 client: ClientCredentials, *, token: str, hint: str,
                 inputs: Mapping[str, str]) -> bool:
    """Revoke ``token`` at the provider's ``revoke_url``; True when the provider accepted
    (RFC 7009: an already invalid token is a 200 too)."""
    if provider.revoke_url is None:
        return False
    url = fill(provider.revoke_url, inputs)
    total = http.timeout.read or 10.0
    try:
        async with asyncio.timeout(total):  # the whole call, as in _OAuthClient.post
            if provider.revoke_style == "bearer":
                response = await http.post(url, headers={"Authorization": f"Bearer {token}"})
            else:
                async with _OAuthClient(provider, client, total) as oauth:
                    response = await oauth.revoke_token(url, token=token,
                                                        token_type_hint=hint)
    except (httpx2.HTTPError, TimeoutError):
        return False
    return response.status_code == 200


def expires_at(provider: OAuth2Provider, token: TokenResponse, now: datetime
               ) -> datetime | None:
    seconds = token.expires_in or provider.default_expires_in
    return now + timedelta(seconds=seconds) if seconds else None


def metadata(provider: OAuth2Provider, token: TokenResponse) -> dict[str, Any]:
    """The declared ``token_metadata`` paths that hold plain values. Tokens are never
    metadata: paths ending in a token-like name are refused at any depth."""
    out: dict[str, Any] = {}
    for path in provider.token_metadata:
        value: Any = token.raw
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str | int | bool) and not _secret_name(path):
            out[path] = value
    return out


def _secret_name(path: str) -> bool:
    last = path.rsplit(".", 1)[-1]
    return "token" in last or "secret" in last or last in ("code", "password")
