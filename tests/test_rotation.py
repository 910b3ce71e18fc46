"""Key rotation: add -> promote -> rewrap -> retire, online and resumable (DESIGN 2).

The helpers here (seeding, ring files, the CLI) are shared with the checklist tests in
tests/security/test_key_storage.py, which hold the rotation tests proper (KS-04 ... KS-09)."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from broker import rotation, store
from broker.crypto import Key, KeyRing
from broker.db import create_engine, sessionmaker
from broker.models import Credential, Integration
from tests.conftest import Database

pytestmark = pytest.mark.anyio


def ring_of(keys: dict[str, bytes], primary: str) -> KeyRing:
    return KeyRing([Key(k, v) for k, v in keys.items()], primary)


def ring_file(path: Path, keys: dict[str, bytes], primary: str) -> Path:
    path.write_text(json.dumps({"primary": primary, "keys": [
        {"id": k, "secret": base64.b64encode(v).decode()} for k, v in keys.items()]}))
    return path


async def seed(url: str, ring: KeyRing, n: int, tag: str) -> list[str]:
    engine = create_engine(url)
    ids = []
    try:
        async with sessionmaker(engine)() as s:
            for i in range(n):
                project = f"prj_{tag}_{i}"
                await store.ensure_project(s, project)
                integration = await store.upsert_integration(
                    s, project_id=project, provider="slack", setup_type="oauth")
                await store.write_credential(s, ring, integration, store.Secrets(
                    access_token=f"at-{tag}-{i}", refresh_token=f"rt-{tag}-{i}"))
                ids.append(integration.id)
                if i % 500 == 499:
                    await s.commit()
            await s.commit()
    finally:
        await engine.dispose()
    return ids


async def open_all(url: str, ring: KeyRing, ids: list[str]) -> dict[str, tuple[str, str]]:
    engine = create_engine(url)
    out = {}
    try:
        async with sessionmaker(engine)() as s:
            rows = (await s.execute(select(Integration, Credential).join(
                Credential, Credential.integration_id == Integration.id).where(
                Integration.id.in_(ids)))).all()
            for integration, credential in rows:
                opened = store.open_credential(ring, integration, credential)
                out[integration.id] = (credential.key_id, opened.access_token or "")
    finally:
        await engine.dispose()
    return out


async def test_reencrypt_uses_fresh_data_keys(own_database: Database) -> None:
    k1 = os.urandom(32)
    tag = f"re{random.randrange(10**9)}"
    ring = ring_of({"k1": k1}, "k1")
    ids = await seed(own_database.url, ring, 5, tag)
    engine = create_engine(own_database.url)
    try:
        async with sessionmaker(engine)() as s:
            before = {c.integration_id: (c.data_key_ct, c.access_token_ct) for c in
                      await s.scalars(select(Credential).where(
                          Credential.integration_id.in_(ids)))}
        progress = await rotation.rewrap(engine, ring, reencrypt=True)
        assert progress.failed == 0
        async with sessionmaker(engine)() as s:
            for c in await s.scalars(select(Credential).where(
                    Credential.integration_id.in_(ids))):
                assert c.data_key_ct != before[c.integration_id][0]
                assert c.access_token_ct != before[c.integration_id][1]
    finally:
        await engine.dispose()
    opened = await open_all(own_database.url, ring, ids)
    assert sorted(at for _, at in opened.values()) == sorted(f"at-{tag}-{i}" for i in range(5))


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "broker", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _env(postgres: Database, ring: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_DATABASE_URL=postgres.url, BROKER_KEYS_FILE=str(ring))
    return env
