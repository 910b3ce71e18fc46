"""Fixtures: a fresh database per backend (SQLite file and a new PostgreSQL database on the
server at 127.0.0.1:5432), migrated once per run; an app per test; API keys and installed
integrations made through the broker's own store functions.

A missing PostgreSQL is a loud skip locally and a failure in CI (``CI`` set).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest
from asgi_lifespan import LifespanManager

from broker import migrate, store
from broker.app import create_app
from broker.crypto import Key, KeyRing
from broker.settings import Settings

PG_ADMIN_DSN = os.environ.get("BROKER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def service_missing(what: str) -> None:
    message = f"{what} is not reachable; these tests need it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(f"LOUD SKIP: {message}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Database:
    kind: str
    url: str
    path: Path | None = None  # the SQLite file
    name: str | None = None  # the PostgreSQL database


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def _postgres() -> Iterator[Database]:
    name = f"broker_test_{secrets.token_hex(6)}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        service_missing(f"PostgreSQL at {PG_ADMIN_DSN} ({type(exc).__name__})")
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    db = Database("postgres", f"{base}/{name}", name=name)
    try:
        migrate.upgrade(db.url)
        yield db
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "broker.db"
        db = Database("sqlite", f"sqlite:///{path}", path=path)
        migrate.upgrade(db.url)
        yield db
        return
    with _postgres() as db:
        yield db


@pytest.fixture(params=["sqlite", "postgres"])
def own_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database for this test alone, for tests that act on every row (key rotation)."""
    if request.param == "sqlite":
        path = tmp_path / "own.db"
        db = Database("sqlite", f"sqlite:///{path}", path=path)
        migrate.upgrade(db.url)
        yield db
        return
    with _postgres() as db:
        yield db


@pytest.fixture
def own_postgres() -> Iterator[Database]:
    with _postgres() as db:
        yield db


@pytest.fixture(scope="session")
def postgres() -> Iterator[Database]:
    """A PostgreSQL database of its own, for tests that need several processes."""
    with _postgres() as db:
        yield db


def make_ring(*ids: str, primary: str | None = None) -> KeyRing:
    ids = ids or ("ktest1",)
    return KeyRing([Key(i, secrets.token_bytes(32)) for i in ids], primary or ids[0])


def ring_json(ring_keys: dict[str, bytes], primary: str) -> str:
    import json
    return json.dumps({"primary": primary, "keys": [
        {"id": k, "secret": base64.b64encode(v).decode()} for k, v in ring_keys.items()]})


@pytest.fixture(scope="session")
def ring() -> KeyRing:
    return make_ring("ktest1")


@pytest.fixture
def settings(database: Database) -> Settings:
    return Settings(database_url=database.url, public_url="https://broker.example.test",
                    return_url_allowlist=("https://app.example.test",))


@dataclass
class Harness:
    """A running app plus helpers that set up state through the broker's own code."""

    app: Any
    client: httpx2.AsyncClient
    ring: KeyRing
    database: Database

    async def key(self, project: str, *scopes: str) -> str:
        async with self.app.state.sessions() as s:
            _, secret = await store.create_api_key(s, project, scopes or ("read",))
            return secret

    async def install(self, project: str, provider: str, *, access_token: str = "at-1",
                      refresh_token: str | None = "rt-1", fields: dict[str, str] | None = None,
                      metadata: dict[str, Any] | None = None) -> str:
        spec = self.app.state.providers[provider]
        async with self.app.state.sessions() as s:
            await store.ensure_project(s, project)
            integration = await store.upsert_integration(
                s, project_id=project, provider=provider, setup_type=spec.setup_type,
                metadata=metadata)
            await store.write_credential(
                s, self.ring, integration,
                store.Secrets(access_token=access_token, refresh_token=refresh_token,
                              fields=fields or {}))
            await s.commit()
            return integration.id


def new_project() -> str:
    return f"prj_{secrets.token_hex(6)}"


@pytest.fixture
async def harness(settings: Settings, ring: KeyRing, database: Database
                  ) -> AsyncIterator[Harness]:
    app = create_app(settings, ring=ring)
    async with LifespanManager(app) as manager:
        transport = httpx2.ASGITransport(app=manager.app)
        async with httpx2.AsyncClient(transport=transport,
                                      base_url="http://broker.test") as client:
            yield Harness(app, client, ring, database)

