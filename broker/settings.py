"""Settings: one frozen object built from ``BROKER_*`` environment variables.

Nothing in the package reads the environment except :meth:`Settings.from_env`, which the CLI
calls once and hands to :func:`broker.app.create_app`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from broker.crypto import KeyRing
from broker.errors import ConfigError

DEFAULT_DATA_DIR = Path(".broker")
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
CLIENT_VAR = re.compile(r"^BROKER_([A-Z0-9_]+)_CLIENT_(ID|SECRET|SECRET_PREVIOUS)$")


@dataclass(frozen=True)
class ClientCredentials:
    """An OAuth app's client id and secret at one provider. Requests use ``client_secret``;
    ``previous_secrets`` are still accepted on signed callbacks while the secret rotates."""

    client_id: str
    client_secret: str = field(repr=False)
    previous_secrets: tuple[str, ...] = field(default=(), repr=False)


def env_slug(slug: str) -> str:
    """The environment-variable form of a provider slug: ``salesforce-sandbox`` ->
    ``SALESFORCE_SANDBOX`` (as in ``BROKER_SALESFORCE_SANDBOX_CLIENT_ID``)."""
    return slug.upper().replace("-", "_")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _proxies(value: str) -> tuple[str, ...]:
    found = tuple(p.strip() for p in value.split(",") if p.strip())
    for proxy in found:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            # Not "*": trusting every peer would let any client pick the address it is
            # rate-limited under.
            raise ConfigError("BROKER_FORWARDED_ALLOW_IPS must be comma-separated addresses "
                              f"or networks (CIDR), not {proxy!r}") from None
    return found


def _public_url(url: str) -> str:
    # Every redirect URI is built from this URL (OA-05): an http one outside loopback would
    # send authorization codes across the network in the clear (RFC 9700 2.1).
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("BROKER_PUBLIC_URL must be an http(s) URL")
    if parts.username is not None or parts.query or parts.fragment:
        raise ConfigError("BROKER_PUBLIC_URL must not carry credentials, a query or a fragment")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ConfigError("BROKER_PUBLIC_URL must be https (plain http only on loopback)")
    return url


@dataclass(frozen=True, kw_only=True)
class Settings:
    # URLs may carry a password: kept out of repr(), which ends up in logs and tracebacks.
    database_url: str = field(repr=False)
    redis_url: str | None = field(default=None, repr=False)
    keys_file: Path | None = None
    keys: str | None = field(default=None, repr=False)
    public_url: str = DEFAULT_PUBLIC_URL
    dashboard_url: str | None = None
    return_url_allowlist: tuple[str, ...] = ()
    providers_file: Path | None = None
    log_level: str = "INFO"
    max_body_bytes: int = 64 * 1024
    # OAuth client credentials from BROKER_<SLUG>_CLIENT_ID / _CLIENT_SECRET, by env_slug.
    oauth_clients: Mapping[str, ClientCredentials] = field(default_factory=dict, repr=False)
    # Seconds to wait for a provider's answer (token exchange, verification).
    provider_timeout: float = 10.0
    # Key material named by the ring's "secret_env" entries (BROKER_KEY_*).
    key_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Tests only: accept webhook URLs on loopback and private networks.
    allow_private_webhooks: bool = False
    # Proxies whose X-Forwarded-For names the client (uvicorn's forwarded_allow_ips): rate
    # limits count per client, not per proxy, only when the proxy in front is listed here.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1",)

    def ring(self) -> KeyRing:
        """The key ring these settings name (``BROKER_KEYS`` or ``BROKER_KEYS_FILE``)."""
        return KeyRing.load(self.keys_file, self.keys, self.key_secrets)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(f"BROKER_{name}", "").strip()
            return value or None

        log_level = (get("LOG_LEVEL") or "INFO").upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"BROKER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        public_url = _public_url((get("PUBLIC_URL") or DEFAULT_PUBLIC_URL).rstrip("/"))
        default_db = f"sqlite:///{(DEFAULT_DATA_DIR / 'broker.db').resolve()}"
        parts: dict[str, dict[str, str]] = {}
        for name, value in env.items():
            if (m := CLIENT_VAR.match(name)) and value.strip():
                parts.setdefault(m[1], {})[m[2]] = value.strip()
        for slug, found in parts.items():
            if {"ID", "SECRET"} - set(found):
                raise ConfigError(f"BROKER_{slug}_CLIENT_ID and BROKER_{slug}_CLIENT_SECRET "
                                  "must be set together")
        allow_private = (get("ALLOW_PRIVATE_WEBHOOKS") or "false").lower()
        if allow_private not in ("true", "false"):
            raise ConfigError("BROKER_ALLOW_PRIVATE_WEBHOOKS must be true or false")
        return cls(
            forwarded_allow_ips=_proxies(get("FORWARDED_ALLOW_IPS") or "127.0.0.1"),
            database_url=get("DATABASE_URL") or default_db,
            redis_url=get("REDIS_URL"),
            keys_file=Path(p) if (p := get("KEYS_FILE")) else None,
            keys=get("KEYS"),
            public_url=public_url,
            dashboard_url=(d.rstrip("/") if (d := get("DASHBOARD_URL")) else None),
            return_url_allowlist=tuple(
                u.strip() for u in (get("RETURN_URL_ALLOWLIST") or "").split(",") if u.strip()
            ),
            providers_file=Path(p) if (p := get("PROVIDERS_FILE")) else None,
            log_level=log_level,
            oauth_clients={slug: ClientCredentials(
                p["ID"], p["SECRET"], tuple(x.strip() for x in p.get("SECRET_PREVIOUS", "")
                                            .split(",") if x.strip()))
                for slug, p in parts.items()},
            allow_private_webhooks=allow_private == "true",
            key_secrets={k: v for k, v in env.items() if k.startswith("BROKER_KEY_") and v},
        )
