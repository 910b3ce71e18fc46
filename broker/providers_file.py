"""``BROKER_PROVIDERS_FILE``: providers declared without code, and overrides of built-ins.

A ``[providers.<slug>]`` table whose slug is not registered declares a generic OAuth2
provider; one whose slug is registered overrides fields of that provider (sandbox hosts,
GitHub Enterprise, local fakes in tests). Either may carry ``client_id`` and
``client_secret``. The result is validated like any entry-point provider.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from broker.errors import ConfigError
from broker.settings import ClientCredentials
from broker.spec import OAuth2Provider, Provider, ProviderError

CLIENT_KEYS = ("client_id", "client_secret")
PREVIOUS_KEY = "previous_client_secrets"
# The fields a code-free provider may set; hooks, fields and actions need code.
GENERIC_KEYS = frozenset({
    "name", "setup_type", "category", "description", "docs_url", "authorize_url",
    "token_url", "revoke_url", "scopes", "scope_separator", "pkce", "client_auth_method",
    "token_request_format", "authorize_params", "token_params", "token_metadata",
    "default_expires_in", "issuer", "iss_parameter_supported", "account_id", *CLIENT_KEYS,
    PREVIOUS_KEY,
})
# Overrides may also move the declarative requests of a built-in.
REQUEST_KEYS = {"verify_url": "verify", "health_check_url": "health_check"}
NOT_OVERRIDABLE = frozenset({"slug", "hooks", "fields", "actions", "apply"})


def _coerce(provider_type: type[Provider], values: Mapping[str, Any], where: str
            ) -> dict[str, Any]:
    types = {f.name: f.type for f in dataclasses.fields(provider_type)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        declared = str(types.get(key, ""))
        if declared.startswith("tuple"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {key} must be a list of strings")
            value = tuple(value)
        elif declared.startswith("Mapping"):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a table")
            value = {str(k): str(v) for k, v in value.items()}
        out[key] = value
    return out


def _client(table: Mapping[str, Any], where: str) -> ClientCredentials | None:
    given = [k for k in CLIENT_KEYS if k in table]
    if not given:
        return None
    if len(given) != 2 or not all(isinstance(table[k], str) and table[k] for k in given):
        raise ConfigError(f"{where}: client_id and client_secret must be set together")
    previous = table.get(PREVIOUS_KEY, [])
    if not isinstance(previous, list) or not all(isinstance(x, str) and x for x in previous):
        raise ConfigError(f"{where}: {PREVIOUS_KEY} must be a list of secrets")
    return ClientCredentials(table["client_id"], table["client_secret"], tuple(previous))


def _declare(slug: str, table: Mapping[str, Any], where: str) -> Provider:
    unknown = sorted(set(table) - GENERIC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for a new provider; "
                          f"allowed: {sorted(GENERIC_KEYS)}")
    if table.get("setup_type", "oauth") != "oauth":
        raise ConfigError(f"{where}: only OAuth2 providers can be declared without code")
    missing = [k for k in ("name", "authorize_url", "token_url") if k not in table]
    if missing:
        raise ConfigError(f"{where}: a new provider needs {', '.join(missing)}")
    values = {k: v for k, v in table.items()
              if k not in (*CLIENT_KEYS, PREVIOUS_KEY, "setup_type")}
    values.setdefault("category", "other")
    values.setdefault("description", f"{values['name']} (declared in the providers file)")
    values.setdefault("docs_url", values["authorize_url"])
    try:
        return OAuth2Provider(slug=slug, **_coerce(OAuth2Provider, values, where))
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _override(base: Provider, table: Mapping[str, Any], where: str) -> Provider:
    allowed = ({f.name for f in dataclasses.fields(base)} - NOT_OVERRIDABLE
               | set(REQUEST_KEYS) | set(CLIENT_KEYS) | {PREVIOUS_KEY})
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: {base.slug} has no overridable field(s) {unknown}; "
                          f"allowed: {sorted(allowed)}")
    values = {k: v for k, v in table.items()
              if k not in CLIENT_KEYS and k not in REQUEST_KEYS and k != PREVIOUS_KEY}
    changes = _coerce(type(base), values, where)
    for key, attr in REQUEST_KEYS.items():
        if key in table:
            current = getattr(base, attr, None)
            if current is None:
                raise ConfigError(f"{where}: {base.slug} declares no {attr} request")
            changes[attr] = dataclasses.replace(current, url=str(table[key]))
    return dataclasses.replace(base, **changes)


def load(path: Path, providers: Mapping[str, Provider]
         ) -> tuple[Mapping[str, Provider], dict[str, ClientCredentials]]:
    """Apply the file at ``path`` to the registered ``providers``; returns the new provider
    mapping and the client credentials it declares, by slug."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read BROKER_PROVIDERS_FILE {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"BROKER_PROVIDERS_FILE {path} is not TOML: {exc}") from None
    tables = doc.get("providers", {})
    if set(doc) - {"providers"} or not isinstance(tables, dict):
        raise ConfigError(f"{path}: expected only [providers.<slug>] tables")
    merged, clients = dict(providers), {}
    for slug, table in tables.items():
        where = f"{path} [providers.{slug}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        provider = (_override(merged[slug], table, where) if slug in merged
                    else _declare(slug, table, where))
        try:
            provider.validate()
        except ProviderError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        merged[slug] = provider
        if (client := _client(table, where)) is not None:
            clients[slug] = client
    return MappingProxyType(dict(sorted(merged.items()))), clients

