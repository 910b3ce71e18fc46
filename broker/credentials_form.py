"""Credentials typed into the connect page (API keys, passwords, webhook URLs): check the
inputs against their fields, then verify them with the provider before anything is stored."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx2

from broker.flow import fill
from broker.spec import ApiKeyProvider, Basic, Field, Header, Provider, WebhookProvider

MAX_INPUT = 2048
MAX_REASON = 200


class Rejected(Exception):
    """The provider refused the credential; the message is its reason, safe to show."""


class NotVerified(Exception):
    """The provider could not be asked (down, slow, odd answer); nothing was stored."""


def check_inputs(fields: tuple[Field, ...], form: Mapping[str, str]) -> tuple[
        dict[str, str], dict[str, str]]:
    """(values, errors by field name). Values are stripped; a field with a ``pattern`` must
    match it whole and one with ``choices`` must be one of them."""
    values, errors = {}, {}
    for f in fields:
        value = form.get(f.name, "").strip()
        if not value:
            if not f.optional:
                errors[f.name] = "Required."
            continue
        if len(value) > MAX_INPUT or any(ord(c) < 32 for c in value):
            errors[f.name] = "Not a valid value."
        elif f.choices and value not in f.choices:
            errors[f.name] = f"Choose one of {', '.join(f.choices)}."
        elif f.pattern and not re.fullmatch(f.pattern, value):
            errors[f.name] = f"Does not look like {f.example or 'a valid value'}."
        else:
            values[f.name] = value
    return values, errors


def check_webhook_url(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` is not an acceptable webhook target, or None. Only https, and no
    loopback, private, link-local or otherwise internal address, by literal or by DNS."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        return "The webhook URL must be an https:// URL without credentials."
    if allow_private:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return "The webhook URL's host does not resolve."
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            return "The webhook URL points at a private or internal address."
    return None


def request_auth(provider: ApiKeyProvider, values: Mapping[str, str]) -> tuple[
        dict[str, str], tuple[str, str] | None]:
    """Headers and basic-auth pair that present the credential to the provider."""
    if isinstance(provider.apply, Header):
        return {provider.apply.name: fill(provider.apply.template, values)}, None
    assert isinstance(provider.apply, Basic)
    return {}, (fill(provider.apply.username, values), fill(provider.apply.password, values))


def _reason(response: httpx2.Response) -> str:
    # Providers put their reason under different names; take the first short string.
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "Message", "error_description", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:MAX_REASON]
    return f"The provider answered HTTP {response.status_code}."


async def verify(provider: Provider, values: Mapping[str, str], http: httpx2.AsyncClient
                 ) -> None:
    """Run the provider's declared verification request with the typed credential."""
    if isinstance(provider, WebhookProvider) or not isinstance(provider, ApiKeyProvider):
        return
    if provider.verify is None:
        return
    headers, auth = request_auth(provider, values)
    try:
        response = await http.request(
            provider.verify.method, fill(provider.verify.url, values),
            headers={"Accept": "application/json", **headers},
            auth=auth if auth else httpx2.USE_CLIENT_DEFAULT)
    except httpx2.HTTPError:
        raise NotVerified("The provider could not be reached to check the credential; "
                          "try again in a moment.") from None
    if response.status_code in provider.verify.expect_status:
        return
    if response.status_code in (400, 401, 403, 404, 422):
        raise Rejected(_reason(response))
    raise NotVerified(f"The provider could not check the credential (HTTP "
                      f"{response.status_code}); try again in a moment.")


def secret_and_plain(provider: Provider, values: Mapping[str, str]) -> tuple[
        dict[str, str], dict[str, str]]:
    """Split typed values into secrets (encrypted) and plain facts (metadata)."""
    secret = {f.name for f in provider.fields if f.secret}
    return ({k: v for k, v in values.items() if k in secret},
            {k: v for k, v in values.items() if k not in secret})
