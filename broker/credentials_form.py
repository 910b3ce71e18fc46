"""Credentials typed into the connect page (API keys, passwords, webhook URLs): check the
inputs against their fields and webhook targets against internal addresses. Verification
with the provider is ``broker.checks``."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from broker.spec import Field, Provider

MAX_INPUT = 2048


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


def secret_and_plain(provider: Provider, values: Mapping[str, str]) -> tuple[
        dict[str, str], dict[str, str]]:
    """Split typed values into secrets (encrypted) and plain facts (metadata)."""
    secret = {f.name for f in provider.fields if f.secret}
    return ({k: v for k, v in values.items() if k in secret},
            {k: v for k, v in values.items() if k not in secret})
