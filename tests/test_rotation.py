"""Key rotation: add -> promote -> rewrap -> retire, online and resumable (DESIGN 2)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from broker import rotation, store
from broker.crypto import Key, KeyRing
from broker.db import create_engine, sessionmaker
from broker.errors import CryptoError
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


async def test_rewrap_moves_every_row_and_is_idempotent(own_database: Database) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    tag = f"rw{random.randrange(10**9)}"
    ids = await seed(own_database.url, ring_of({"k1": k1}, "k1"), 60, tag)
    ring = ring_of({"k1": k1, "k2": k2}, "k2")
    engine = create_engine(own_database.url)
    try:
        progress = await rotation.rewrap(engine, ring, batch=25)
        assert progress.failed == 0 and progress.succeeded >= 60
        again = await rotation.rewrap(engine, ring, batch=25)
        assert (again.processed, again.succeeded) == (0, 0)
        assert (await rotation.rows_per_key(engine)).get("k1", 0) == 0
    finally:
        await engine.dispose()
    opened = await open_all(own_database.url, ring_of({"k2": k2}, "k2"), ids)  # k1 gone
    assert {kid for kid, _ in opened.values()} == {"k2"}
    assert sorted(at for _, at in opened.values()) == sorted(f"at-{tag}-{i}" for i in range(60))


async def test_undecryptable_rows_are_reported_and_left_untouched(own_database: Database) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    tag = f"bad{random.randrange(10**9)}"
    ids = await seed(own_database.url, ring_of({"k1": k1}, "k1"), 10, tag)
    engine = create_engine(own_database.url)
    try:
        async with sessionmaker(engine)() as s:
            bad = await s.get(Credential, ids[3])
            corrupted = bad.data_key_ct[:-1] + bytes([bad.data_key_ct[-1] ^ 1])
            await s.execute(update(Credential).where(Credential.integration_id == ids[3])
                            .values(data_key_ct=corrupted))
            await s.commit()
        progress = await rotation.rewrap(engine, ring_of({"k1": k1, "k2": k2}, "k2"))
        assert progress.failed == 1 and progress.failed_ids == [ids[3]]
        async with sessionmaker(engine)() as s:
            row = await s.get(Credential, ids[3])
            assert (row.key_id, row.data_key_ct) == ("k1", corrupted)
    finally:
        await engine.dispose()


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


async def _churn(url: str, ring: KeyRing, ids: list[str], stop: asyncio.Event
                 ) -> tuple[int, int, dict[str, str]]:
    """Keep reading and refreshing (compare-and-swap writes) random rows; return
    (reads, failed reads, the latest access token written per row)."""
    engine = create_engine(url, )
    reads = failures = 0
    written: dict[str, str] = {}
    rng = random.Random(7)
    try:
        sessions = sessionmaker(engine)
        while not stop.is_set():
            integration_id = rng.choice(ids)
            async with sessions() as s:
                integration = await s.get(Integration, integration_id)
                credential = await s.get(Credential, integration_id)
                try:
                    old = store.open_credential(ring, integration, credential)
                    reads += 1
                except CryptoError:
                    failures += 1
                    continue
                new_token = f"at-new-{rng.randrange(10**9)}"
                done = await store.swap_credential(
                    s, ring, integration, expected_version=credential.version,
                    secrets=store.Secrets(access_token=new_token,
                                          refresh_token=old.refresh_token),
                    token_type="bearer", scopes=[], expires_at=None)
                await s.commit()
                if done:
                    written[integration_id] = new_token
            await asyncio.sleep(0)
    finally:
        await engine.dispose()
    return reads, failures, written


async def test_rotation_under_load_and_after_sigkill(own_postgres: Database,
                                                     tmp_path: Path) -> None:
    postgres = own_postgres
    k1, k2 = os.urandom(32), os.urandom(32)
    tag = f"load{random.randrange(10**9)}"
    ids = await seed(postgres.url, ring_of({"k1": k1}, "k1"), 3000, tag)
    path = ring_file(tmp_path / "keys.json", {"k1": k1, "k2": k2}, "k1")
    env = _env(postgres, path)
    promote = _cli(env, "keys", "promote", "k2")
    assert promote.wait(60) == 0, promote.communicate()
    ring = ring_of({"k1": k1, "k2": k2}, "k2")

    # A rewrap killed midway, then run again while reads and refreshes go on.
    first = _cli(env, "keys", "rewrap", "--batch", "50", "--quiet")
    engine = create_engine(postgres.url)
    try:
        deadline = time.monotonic() + 60
        while (await rotation.rows_per_key(engine)).get("k2", 0) < 200:
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            await asyncio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        counts = await rotation.rows_per_key(engine)
        assert counts.get("k1", 0) > 0, "killed too late to prove resumption"
    finally:
        await engine.dispose()
    for proc in (first, promote):
        proc.communicate()

    stop = asyncio.Event()
    churn = asyncio.create_task(_churn(postgres.url, ring, ids, stop))
    second = _cli(env, "keys", "rewrap", "--batch", "100", "--json")
    while second.poll() is None:
        await asyncio.sleep(0.05)
    stop.set()
    reads, failures, written = await churn
    out, err = second.communicate()
    assert second.returncode == 0, err
    assert json.loads(out)["failed"] == 0
    assert reads > 50 and failures == 0

    opened = await open_all(postgres.url, ring_of({"k2": k2}, "k2"), ids)
    assert len(opened) == 3000 and {kid for kid, _ in opened.values()} == {"k2"}
    for integration_id, token in written.items():  # no refresh write was lost
        assert opened[integration_id][1] == token

    retire = _cli(env, "keys", "retire", "k1")
    assert retire.wait(60) == 0, retire.communicate()
    retire.communicate()
    assert [k["id"] for k in json.loads(path.read_text())["keys"]] == ["k2"]


async def test_retire_is_refused_while_rows_use_the_key(own_postgres: Database,
                                                        tmp_path: Path) -> None:
    postgres = own_postgres
    k1, k2 = os.urandom(32), os.urandom(32)
    await seed(postgres.url, ring_of({"k1": k1}, "k1"), 3, f"ret{random.randrange(10**9)}")
    path = ring_file(tmp_path / "keys.json", {"k1": k1, "k2": k2}, "k2")
    proc = _cli(_env(postgres, path), "keys", "retire", "k1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "k1" in err and "rewrap" in err
    assert len(json.loads(path.read_text())["keys"]) == 2
    proc = _cli(_env(postgres, path), "keys", "retire", "k2")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "primary" in err


def test_key_material_from_the_environment(tmp_path: Path) -> None:
    from broker.errors import ConfigError
    from broker.settings import Settings

    material = base64.b64encode(os.urandom(32)).decode()
    doc = json.dumps({"primary": "k9", "keys": [{"id": "k9", "secret_env": "BROKER_KEY_K9"}]})
    settings = Settings.from_env({"BROKER_KEYS": doc, "BROKER_KEY_K9": material})
    assert settings.ring().primary_id == "k9"
    assert material not in repr(settings)
    with pytest.raises(ConfigError, match="BROKER_KEY_K9, which is not set"):
        Settings.from_env({"BROKER_KEYS": doc}).ring()


