"""Two ``broker serve`` processes sharing PostgreSQL and Redis behave as one service: a pause
in one stops hand-outs in the other. The ``brokers`` fixture also serves the refresh storm
over both (CC-01, tests/security/test_refresh_safety.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest

from broker import apikeys, store
from broker.crypto import Key, KeyRing
from broker.db import create_engine, sessionmaker, utcnow
from broker.models import ServiceToken
from tests.conftest import Database, new_project, service_missing
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import FakeState
from tests.test_connect import providers_toml

REDIS = "redis://127.0.0.1:6379/0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def brokers(own_postgres: Database, tmp_path: Path, fakes: tuple[str, FakeState]
            ) -> Iterator[tuple[list[str], KeyRing]]:
    # A database of its own: `broker serve` refuses a database holding credentials under
    # keys its ring lacks, and other tests write under theirs.
    database = own_postgres
    if not _redis_up():
        service_missing("Redis at 127.0.0.1:6379")
    material = secrets.token_bytes(32)
    ring = KeyRing([Key("kmulti", material)], "kmulti")
    providers = tmp_path / "providers.toml"
    providers.write_text(providers_toml(fakes[0]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_DATABASE_URL=database.url, BROKER_REDIS_URL=REDIS,
               BROKER_PROVIDERS_FILE=str(providers), BROKER_LOG_LEVEL="WARNING",
               BROKER_KEYS=json.dumps({"primary": "kmulti", "keys": [
                   {"id": "kmulti", "secret": base64.b64encode(material).decode()}]}))
    ports = [_free_port(), _free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "broker", "serve", "--port", str(p)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        deadline = time.monotonic() + 30
        for url, proc in zip(urls, procs, strict=True):
            while True:
                try:
                    if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"broker did not start: {proc.stderr.read()!r}")  # type: ignore[union-attr]
                time.sleep(0.1)
        yield urls, ring
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)
            if proc.stderr:
                proc.stderr.close()


async def _seed(database: Database, ring: KeyRing, fakes: FakeState) -> tuple[str, str]:
    project = new_project()
    fakes.refresh_tokens["rt-multi"] = "read write"
    engine = create_engine(database.url)
    try:
        async with sessionmaker(engine)() as s:
            await store.ensure_project(s, project)
            integration = await store.upsert_integration(
                s, project_id=project, provider="acme", setup_type="oauth")
            await store.write_credential(
                s, ring, integration,
                store.Secrets(access_token="at-expired", refresh_token="rt-multi"),
                token_type="bearer", scopes=["read"], expires_at=utcnow() - timedelta(minutes=1))
            public, token = apikeys.generate(apikeys.SERVICE_TOKEN_PREFIX)
            s.add(ServiceToken(id=f"st_{public}", name="main-api", created_at=utcnow(),
                               token_hash=apikeys.digest(token)))
            await s.commit()
    finally:
        await engine.dispose()
    return project, token


def test_a_pause_in_one_process_stops_hand_outs_in_the_other(
        brokers: tuple[list[str], KeyRing], own_postgres: Database,
        fakes: tuple[str, FakeState]) -> None:
    urls, ring = brokers
    project, token = asyncio.run(_seed(own_postgres, ring, fakes[1]))
    headers = {"Authorization": f"Bearer {token}"}
    base = f"/internal/v1/projects/{project}/integrations/acme"
    with httpx2.Client(timeout=30, trust_env=False, headers=headers) as client:
        for url in urls:  # both processes now hold the hand-out in their caches
            assert client.get(url + base + "/credentials").status_code == 200
        assert client.patch(urls[0] + base + "/lifecycle",
                            json={"status": "paused"}).status_code == 200
        paused_at = time.monotonic()
        while True:
            r = client.get(urls[1] + base + "/credentials")
            if r.status_code == 409:
                break
            assert r.status_code == 200
            assert time.monotonic() - paused_at < 1.2, "the other process kept handing out"
            time.sleep(0.01)
        assert r.json()["error"]["code"] == "integration_paused"
        assert client.patch(urls[1] + base + "/lifecycle",
                            json={"status": "active"}).status_code == 200
        deadline = time.monotonic() + 1.2
        while client.get(urls[0] + base + "/credentials").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
