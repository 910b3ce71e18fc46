"""Settings: one frozen object built from ``BROKER_*`` environment variables.

Nothing in the package reads the environment except :meth:`Settings.from_env`, which the CLI
calls once and hands to :func:`broker.app.create_app`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import ConfigError

DEFAULT_DATA_DIR = Path(".broker")
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str
    redis_url: str | None = None
    keys_file: Path | None = None
    keys: str | None = field(default=None, repr=False)
    public_url: str = DEFAULT_PUBLIC_URL
    dashboard_url: str | None = None
    return_url_allowlist: tuple[str, ...] = ()
    providers_file: Path | None = None
    log_level: str = "INFO"
    max_body_bytes: int = 64 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(f"BROKER_{name}", "").strip()
            return value or None

        log_level = (get("LOG_LEVEL") or "INFO").upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"BROKER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        public_url = (get("PUBLIC_URL") or DEFAULT_PUBLIC_URL).rstrip("/")
        if not public_url.startswith(("http://", "https://")):
            raise ConfigError("BROKER_PUBLIC_URL must be an http(s) URL")
        default_db = f"sqlite:///{(DEFAULT_DATA_DIR / 'broker.db').resolve()}"
        return cls(
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
        )
