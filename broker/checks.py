"""The declarative provider requests: verifying a typed credential and the health check.

Both send a :class:`broker.spec.Request` with the credential presented the way the provider
declares (``apply`` for keys, ``token_header`` for OAuth access tokens).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx2

from broker.flow import fill
from broker.spec import ApiKeyProvider, Basic, Header, OAuth2Provider, Provider, Request

MAX_REASON = 200


class Rejected(Exception):
    """The provider refused the credential; the message is its reason, safe to show."""


class NotVerified(Exception):
    """The provider could not be asked (down, slow, odd answer); nothing was decided."""


def presentation(provider: Provider, values: Mapping[str, str]) -> tuple[
        dict[str, str], tuple[str, str] | None]:
    """Headers and basic-auth pair that present a credential to the provider. ``values``
    holds the fields and, for OAuth, ``access_token``."""
    if isinstance(provider, OAuth2Provider):
        header = provider.token_header
        return {header.name: fill(header.template, values)}, None
    assert isinstance(provider, ApiKeyProvider)
    if isinstance(provider.apply, Header):
        return {provider.apply.name: fill(provider.apply.template, values)}, None
    assert isinstance(provider.apply, Basic)
    return {}, (fill(provider.apply.username, values), fill(provider.apply.password, values))


def reason(response: httpx2.Response) -> str:
    """The provider's own words for a refusal, if it gave short ones."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "Message", "error_description", "error", "detail", "errors"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, list) and value and isinstance(value[0], dict):
                value = value[0].get("message")
            if isinstance(value, str) and value.strip():
                return value.strip()[:MAX_REASON]
    return f"The provider answered HTTP {response.status_code}."


def _succeeded(request: Request, response: httpx2.Response) -> bool:
    if response.status_code not in request.expect_status:
        return False
    if request.expect_json is None:
        return True
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and all(body.get(k) == v
                                          for k, v in request.expect_json.items())


async def run(http: httpx2.AsyncClient, provider: Provider, request: Request,
              values: Mapping[str, str]) -> None:
    """Send ``request`` with the credential in ``values``; raise :class:`Rejected` when
    the provider refuses it and :class:`NotVerified` when it cannot tell."""
    headers, auth = presentation(provider, values)
    try:
        # The client's timeouts bound the connect and each read, and a read restarts with
        # every byte: this bounds the call as a whole, so a dripping provider cannot hold a
        # request or a worker sweep.
        async with asyncio.timeout(http.timeout.read or 10.0):
            response = await http.request(
                request.method, fill(request.url, values), json=request.json,
                headers={"Accept": "application/json", **request.headers, **headers},
                auth=auth if auth else httpx2.USE_CLIENT_DEFAULT)
    except (httpx2.HTTPError, TimeoutError):
        raise NotVerified("The provider could not be reached; try again in a moment.") from None
    if _succeeded(request, response):
        return
    if response.status_code in (200, 400, 401, 403, 404, 422):
        raise Rejected(reason(response))
    raise NotVerified(f"The provider could not check the credential (HTTP "
                      f"{response.status_code}); try again in a moment.")


async def verify(http: httpx2.AsyncClient, provider: Provider, values: Mapping[str, str]
                 ) -> None:
    """Check a typed credential before it is stored (providers that declare ``verify``)."""
    if isinstance(provider, ApiKeyProvider) and provider.verify is not None:
        await run(http, provider, provider.verify, values)
