"""The resources a broker process holds: shared by the HTTP app and the worker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from sqlalchemy.ext.asyncio import AsyncEngine

from broker import keycheck, registry
from broker.crypto import KeyRing
from broker.db import create_engine, sessionmaker
from broker.metrics import Metrics
from broker.settings import ClientCredentials, Settings
from broker.spec import Provider
from broker.state import StateStore, open_state


@dataclass
class Runtime:
    settings: Settings
    ring: KeyRing
    providers: Mapping[str, Provider]
    clients: Mapping[str, ClientCredentials]
    engine: AsyncEngine
    sessions: Any
    state_store: StateStore
    http: httpx2.AsyncClient
    metrics: Metrics
    # Ring key ids whose material differs from the fingerprint stored at their first use;
    # None until the check could reach the database (the readiness probe retries it).
    key_mismatch: list[str] | None = None


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, ring: KeyRing | None = None,
    providers: Mapping[str, Provider] | None = None,
    clients: Mapping[str, ClientCredentials] | None = None,
    state_store: StateStore | None = None,
) -> AsyncIterator[Runtime]:
    if providers is None:
        providers, clients = registry.load_configured(settings)
    engine = create_engine(settings.database_url)
    runtime = Runtime(
        settings=settings,
        ring=ring or settings.ring(),
        providers=providers,
        clients=clients or {},
        engine=engine,
        sessions=sessionmaker(engine),
        state_store=state_store or open_state(settings.redis_url),
        # One pooled client for provider calls; it follows no redirects, so a credential
        # is never carried to a host the declaration did not name.
        http=httpx2.AsyncClient(timeout=settings.provider_timeout, follow_redirects=False,
                                trust_env=False),
        metrics=Metrics(),
    )
    try:
        runtime.key_mismatch = await keycheck.check(engine, runtime.ring)
        yield runtime
    finally:
        await runtime.http.aclose()
        await runtime.state_store.close()
        await engine.dispose()
