"""Checklist section B: token storage and key rotation (KS-01 ... KS-12).

Every test is named after the item it proves. Storage tests run on SQLite and PostgreSQL;
those that need row locks, advisory locks or processes killed mid-transaction run on
PostgreSQL. Providers are the fakes in tests/fakes over real loopback HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select, text, update

from broker import keycheck, rotation, store
from broker.app import create_app
from broker.crypto import (
    ROW_KEY_ID,
    Key,
    KeyRing,
    RowContext,
    add_key,
    blob_key_id,
    promote_key,
    remove_key,
    set_disabled,
)
from broker.db import create_engine, sessionmaker, utcnow
from broker.errors import ConfigError, CryptoError
from broker.models import AuditEvent, Credential, Integration, KeyFingerprint
from broker.settings import Settings
from broker.state import RedisState
from tests.conftest import (
    PG_ADMIN_DSN,
    Database,
    Harness,
    make_ring,
    new_project,
    ring_json,
    service_missing,
)
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import FakeState
from tests.test_connect import APP, PUBLIC, Flow, flow_settings, make_flow, providers_toml, query  # noqa: F401
from tests.test_rotation import _cli, _env, open_all, ring_file, ring_of, seed

pytestmark = pytest.mark.anyio

CTX = RowContext("prj_a", "slack", "int_1")
REDIS_URL = "redis://127.0.0.1:6379/0"
SENTINELS = {
    "access": "AT-SENTINEL-4f1d2c9b7e",
    "refresh": "RT-SENTINEL-8a3e6b1c0d",
    "api_key": "KEY-SENTINEL-77c2e9a0f1",
}


# -- helpers ---------------------------------------------------------------------------------

def _encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw),
            value.encode("utf-16-le")]


def _dump(db: Database) -> bytes:
    if db.kind == "sqlite":
        assert db.path is not None
        # The WAL holds recent writes that the main file may not have yet.
        return b"".join(p.read_bytes() for p in db.path.parent.glob(db.path.name + "*"))
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.fail("pg_dump is not installed")
    url = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{db.name}"
    return subprocess.run([pg_dump, "--data-only", url], check=True, capture_output=True,
                          timeout=60).stdout


async def _service_token(app: Any) -> str:
    async with app.state.sessions() as s:
        return (await store.create_service_token(s, "main-api"))[1]


async def _read(client: httpx2.AsyncClient, token: str, project: str, provider: str
                ) -> httpx2.Response:
    return await client.get(
        f"/internal/v1/projects/{project}/integrations/{provider}/credentials",
        headers={"Authorization": f"Bearer {token}"})


@contextlib.asynccontextmanager
async def _app(settings: Settings, ring: KeyRing
               ) -> AsyncIterator[tuple[Any, httpx2.AsyncClient]]:
    app = create_app(settings, ring=ring)
    async with LifespanManager(app) as manager:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app),
                                      base_url="http://broker.test") as client:
            yield app, client


async def _install(app: Any, ring: KeyRing, project: str, provider: str = "slack", *,
                   access_token: str | None = "at-1", refresh_token: str | None = None
                   ) -> str:
    async with app.state.sessions() as s:
        await store.ensure_project(s, project)
        integration = await store.upsert_integration(
            s, project_id=project, provider=provider, setup_type="oauth")
        await store.write_credential(s, ring, integration, store.Secrets(
            access_token=access_token, refresh_token=refresh_token), token_type="bearer")
        await s.commit()
        return integration.id


def _settings(db: Database) -> Settings:
    return Settings(database_url=db.url, public_url="https://broker.example.test")


async def _row(url: str, integration_id: str) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(select(Credential.__table__).where(
                Credential.__table__.c.integration_id == integration_id))).mappings().one()
            return dict(row)
    finally:
        await engine.dispose()


def _no_secret_in(body: str, *secrets_: str) -> None:
    for secret in secrets_:
        assert secret not in body
    assert "Traceback" not in body and "InvalidTag" not in body and "CryptoError" not in body


@pytest.fixture
async def f(flow_settings: Settings, ring: KeyRing,  # noqa: F811
            fakes: tuple[str, FakeState]) -> AsyncIterator[Flow]:
    async for value in make_flow(flow_settings, ring, fakes):
        yield value


# -- KS-01 no plaintext at rest --------------------------------------------------------------

async def test_ks_01_no_secret_in_clear_in_a_database_dump(harness: Harness) -> None:
    project = new_project()
    await harness.install(project, "slack", access_token=SENTINELS["access"],
                          refresh_token=SENTINELS["refresh"])
    await harness.install(project, "postmark", access_token=None, refresh_token=None,
                          fields={"server_token": SENTINELS["api_key"]})
    key = await harness.key(project, "read", "integrations:write")
    dump = _dump(harness.database)
    assert project.encode() in dump  # the dump really holds this run's rows
    for value in [*SENTINELS.values(), key, key[4:]]:
        for encoded in _encodings(value):
            assert encoded not in dump, value


async def _redis_snapshot(client: Any) -> dict[bytes, bytes]:
    """Every broker key in the Redis database: its DUMP and its plain value. Both, because
    DUMP compresses longer strings (LZF), which would hide a secret from a byte search."""
    out: dict[bytes, bytes] = {}
    async for key in client.scan_iter(match="broker:*", count=500):
        dumped = await client.dump(key)
        if dumped is None:  # expired between SCAN and DUMP
            continue
        kind = (await client.type(key)).decode()
        if kind == "string":
            value = await client.get(key) or b""
        elif kind == "hash":
            value = b"".join(k + v for k, v in (await client.hgetall(key)).items())
        elif kind == "list":
            value = b"".join(await client.lrange(key, 0, -1))
        elif kind == "set":
            value = b"".join(await client.smembers(key))
        elif kind == "zset":
            value = b"".join(await client.zrange(key, 0, -1))
        else:
            value = b""
        out[key] = dumped + value
    return out


def _assert_clean(snapshot: dict[bytes, bytes], secrets_: list[str]) -> None:
    blob = b"\n".join(k + b"=" + v for k, v in snapshot.items())
    for secret in secrets_:
        for encoded in _encodings(secret):
            assert encoded not in blob, secret


async def test_ks_01_no_secret_in_redis_after_a_full_install(
        flow_settings: Settings, ring: KeyRing,  # noqa: F811
        fakes: tuple[str, FakeState]) -> None:
    import redis.asyncio as aioredis

    from broker.state import _key

    raw = aioredis.from_url(REDIS_URL)
    try:
        await raw.ping()
    except Exception:
        await raw.aclose()
        service_missing("Redis at 127.0.0.1:6379")
    fake_url, state = fakes
    server_token = "2b1c3d4e-5f60-4a7b-8c9d-" + os.urandom(6).hex()  # Postmark: a UUID
    wrong_token = "9f8e7d6c-5b4a-4321-8765-" + os.urandom(6).hex()
    state.postmark_tokens = {server_token}
    state.auto_approve = True
    settings = replace(flow_settings, redis_url=REDIS_URL)
    try:
        async for f in make_flow(settings, ring, fakes, state_store=RedisState(REDIS_URL)):
            project = new_project()
            # OAuth: while the browser is at the provider, the state record is in Redis.
            start = await f.to_provider(project, "acme")
            oauth_state = query(start.headers["location"])["state"][0]
            mid = await _redis_snapshot(raw)
            assert _key("oauth", oauth_state).encode() in mid  # the scan sees this run
            callback = (await f.get(start.headers["location"])).headers["location"]
            done = await f.get(callback)
            assert done.headers["location"].endswith("status=success&provider=acme")
            # An API key: refused once (re-shown form), then accepted.
            page = await f.get(await f.install_url(project, "postmark"))
            action = page.text.split("action='", 1)[1].split("'", 1)[0]
            form_id = action.rsplit("/", 1)[1]
            assert _key("form", form_id).encode() in await _redis_snapshot(raw)
            refused = await f.browser.post(action, data={"server_token": wrong_token})
            assert refused.status_code == 422
            after_refusal = await _redis_snapshot(raw)
            ok = await f.browser.post(action, data={"server_token": server_token})
            assert ok.headers["location"].endswith("status=success&provider=postmark")
            # And a read by the main API, which caches hand-outs (in process only).
            token = await _service_token(f.app)
            assert (await _read(f.browser, token, project, "acme")).status_code == 200
            final = await _redis_snapshot(raw)

            [integration] = [i for i in await f.integrations(project) if i.provider == "acme"]
            async with f.app.state.sessions() as s:
                cred = await s.get(Credential, integration.id)
                opened = store.open_credential(f.app.state.ring, integration, cred)
            assert opened.access_token and opened.refresh_token
            secrets_ = [opened.access_token, opened.refresh_token, server_token, wrong_token,
                        token]
            for snapshot in (mid, after_refusal, final):
                _assert_clean(snapshot, secrets_)
            # The PKCE verifier lives in the state record until the callback takes it (the
            # exchange needs it); after that it is gone.
            verifier = state.token_requests[0]["body"]["code_verifier"]
            assert verifier.encode() in mid[_key("oauth", oauth_state).encode()]
            _assert_clean(after_refusal, [verifier])
            _assert_clean(final, [verifier])
    finally:
        await raw.aclose()


# -- KS-02 associated data binds each ciphertext to its row -----------------------------------

@pytest.mark.parametrize("other", [
    RowContext("prj_b", "slack", "int_1"),
    RowContext("prj_a", "discord", "int_1"),
    RowContext("prj_a", "slack", "int_2"),
    # Length prefixes: moving characters between parts changes the associated data.
    RowContext("prj_as", "lack", "int_1"),
])
def test_ks_02_ciphertext_bound_to_its_row(other: RowContext) -> None:
    ring = make_ring()
    sealed = ring.seal(CTX, {"access_token": b"at"})
    with pytest.raises(CryptoError):
        ring.open(other, sealed.data_key, sealed.fields)


def test_ks_02_fields_cannot_be_swapped_within_a_row() -> None:
    ring = make_ring()
    sealed = ring.seal(CTX, {"access_token": b"at", "refresh_token": b"rt"})
    swapped = {"access_token": sealed.fields["refresh_token"],
               "refresh_token": sealed.fields["access_token"]}
    with pytest.raises(CryptoError):
        ring.open(CTX, sealed.data_key, swapped)


def test_ks_02_associated_data_is_length_prefixed_and_names_the_whole_context() -> None:
    from broker.crypto import FORMAT_VERSION, _aad

    aad = _aad("k1", CTX, "access_token")
    parts, rest = [], aad
    while rest:
        n = int.from_bytes(rest[:4], "big")
        parts.append(rest[4:4 + n].decode())
        rest = rest[4 + n:]
    assert parts == [str(FORMAT_VERSION), "k1", "prj_a", "slack", "int_1", "access_token"]


async def test_ks_02_row_copied_or_fields_swapped_fail_closed_through_the_api(
        harness: Harness) -> None:
    a, b = new_project(), new_project()
    id_a = await harness.install(a, "slack", access_token="token-of-a", refresh_token="rt-a")
    id_b = await harness.install(b, "slack", access_token="token-of-b", refresh_token="rt-b")
    token = await _service_token(harness.app)
    assert (await _read(harness.client, token, b, "slack")).status_code == 200
    async with harness.app.state.sessions() as s:
        src = await s.get(Credential, id_a)
        await s.execute(update(Credential).where(Credential.integration_id == id_b).values(
            data_key_ct=src.data_key_ct, access_token_ct=src.access_token_ct,
            refresh_token_ct=src.refresh_token_ct, secret_ct=src.secret_ct))
        await s.commit()
    harness.app.state.credentials._cache.clear()  # the hand-out cache predates the copy
    async with harness.app.state.sessions() as s:
        integration_b = await s.get(Integration, id_b)
        with pytest.raises(CryptoError):
            store.open_credential(harness.ring, integration_b, await s.get(Credential, id_b))
    r = await _read(harness.client, token, b, "slack")
    assert r.status_code == 500 and r.json()["error"]["code"] == "credential_unreadable"
    _no_secret_in(r.text, "token-of-a", "token-of-b", "rt-a", "rt-b")
    # The original still opens where it belongs.
    r = await _read(harness.client, token, a, "slack")
    assert r.status_code == 200 and r.json()["data"]["access_token"] == "token-of-a"

    # Access and refresh token swapped inside one row.
    async with harness.app.state.sessions() as s:
        row = await s.get(Credential, id_a)
        await s.execute(update(Credential).where(Credential.integration_id == id_a).values(
            access_token_ct=row.refresh_token_ct, refresh_token_ct=row.access_token_ct))
        await s.commit()
    harness.app.state.credentials._cache.clear()
    r = await _read(harness.client, token, a, "slack")
    assert r.status_code == 500 and r.json()["error"]["code"] == "credential_unreadable"
    _no_secret_in(r.text, "token-of-a", "rt-a")


# -- KS-03 ciphertext format -----------------------------------------------------------------

def test_ks_03_ten_thousand_encryptions_have_distinct_nonces() -> None:
    ring = make_ring()
    nonces = set()
    for _ in range(10_000):
        blob = ring.seal(CTX, {"x": b"p"}).fields["x"]
        start = 2 + blob[1]
        nonces.add(blob[start:start + 12])
    assert len(nonces) == 10_000


class _CountingAead:
    def __init__(self, inner: Any):
        self.inner, self.calls = inner, 0

    def decrypt(self, *args: Any) -> bytes:
        self.calls += 1
        return bytes(self.inner.decrypt(*args))

    def encrypt(self, *args: Any) -> bytes:
        return bytes(self.inner.encrypt(*args))


def test_ks_03_unknown_key_id_fails_without_trial_decryption() -> None:
    sealed = make_ring("k1").seal(CTX, {"access_token": b"at"})
    other = make_ring("k2", "k3", "k4")
    spies = {kid: _CountingAead(aead) for kid, aead in other._aeads.items()}
    other._aeads = spies  # type: ignore[assignment]
    with pytest.raises(CryptoError, match="unknown key id 'k1'"):
        other.open(CTX, sealed.data_key, sealed.fields)
    assert [s.calls for s in spies.values()] == [0, 0, 0]  # no key was tried
    # Same id, different material: authentication fails, it never decrypts to garbage.
    with pytest.raises(CryptoError, match="authentication"):
        make_ring("k1").open(CTX, sealed.data_key, sealed.fields)


def test_ks_03_every_header_byte_is_authenticated() -> None:
    # The ring holds ids one bit away from k1, so a flipped id can name a real key.
    ring = make_ring("k1", "k0", "k3", "j1", primary="k1")
    sealed = ring.seal(CTX, {"access_token": b"at"})
    assert ring.open(CTX, sealed.data_key, sealed.fields)["access_token"] == b"at"
    for name, blob in (("data key", sealed.data_key),
                       ("field", sealed.fields["access_token"])):
        header = 2 + blob[1]  # version, id length, id
        assert blob[:header] == bytes([1, len(blob_key_id(blob))]) + blob_key_id(blob).encode()
        for i in range(header):
            for value in range(256):
                if value == blob[i]:
                    continue
                tampered = bytearray(blob)
                tampered[i] = value
                data_key = bytes(tampered) if name == "data key" else sealed.data_key
                fields = ({"access_token": bytes(tampered)} if name == "field"
                          else sealed.fields)
                with pytest.raises(CryptoError):
                    ring.open(CTX, data_key, fields)
    # ... and the body (nonce, ciphertext, tag) of both blobs.
    for name, blob in (("data key", sealed.data_key),
                       ("field", sealed.fields["access_token"])):
        for i in range(2 + blob[1], len(blob)):
            tampered = bytearray(blob)
            tampered[i] ^= 0x01
            data_key = bytes(tampered) if name == "data key" else sealed.data_key
            fields = {"access_token": bytes(tampered)} if name == "field" else sealed.fields
            with pytest.raises(CryptoError):
                ring.open(CTX, data_key, fields)
    assert blob_key_id(sealed.fields["access_token"]) == ROW_KEY_ID


# -- KS-04 two-phase key roll-out ------------------------------------------------------------

async def test_ks_04_instances_on_either_primary_read_each_others_writes(
        own_database: Database) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    old = ring_of({"k1": k1, "k2": k2}, "k1")  # phase 1: k2 rolled out, decrypt only
    new = ring_of({"k1": k1, "k2": k2}, "k2")  # phase 2: k2 promoted here first
    settings = _settings(own_database)
    async with _app(settings, old) as (app1, c1), _app(settings, new) as (app2, c2):
        token = await _service_token(app1)
        p1, p2 = new_project(), new_project()
        await _install(app1, old, p1, access_token="at-from-old")
        await _install(app2, new, p2, access_token="at-from-new")
        engine = create_engine(own_database.url)
        try:
            assert await rotation.rows_per_key(engine) == {"k1": 1, "k2": 1}
        finally:
            await engine.dispose()
        for client in (c1, c2):
            assert (await client.get("/readyz")).status_code == 200
            for project, expected in ((p1, "at-from-old"), (p2, "at-from-new")):
                r = await _read(client, token, project, "slack")
                assert r.status_code == 200, r.text
                assert r.json()["data"]["access_token"] == expected


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          *argv: str, **env: str) -> tuple[int, str, str]:
    from broker.cli import main

    for name in [n for n in os.environ if n.startswith("BROKER_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ks_04_rotation_commands_never_make_an_unknown_key_primary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    env = {"BROKER_KEYS_FILE": str(path)}
    assert _main(monkeypatch, capsys, "keys", "add", **env)[0] == 0
    first = json.loads(path.read_text())["primary"]
    code, out, _ = _main(monkeypatch, capsys, "keys", "add", **env)
    assert code == 0 and "decrypt-only" in out
    doc = json.loads(path.read_text())
    second = [k["id"] for k in doc["keys"] if k["id"] != first][0]
    assert doc["primary"] == first  # adding never changes what instances encrypt with
    before = path.read_text()
    # A key can only become primary once it is in the ring that is rolled out.
    code, _, err = _main(monkeypatch, capsys, "keys", "promote", "knot-in-ring", **env)
    assert code != 0 and "not in" in err and path.read_text() == before
    # ... and not while it is disabled.
    set_disabled(path, second, True)
    code, _, err = _main(monkeypatch, capsys, "keys", "promote", second, **env)
    assert code != 0 and "disabled" in err
    set_disabled(path, second, False)
    code, out, _ = _main(monkeypatch, capsys, "keys", "promote", second, **env)
    assert code == 0 and "Roll the ring out to every instance" in out
    ring = KeyRing.load(path, None)
    assert (ring.primary_id, ring.ids) == (second, sorted([first, second]))


# -- KS-05 online rewrap ---------------------------------------------------------------------

async def test_ks_05_rewrap_moves_every_row_and_is_idempotent(own_database: Database) -> None:
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


def _count_on(url: str, key_id: str) -> int:
    """Rows on ``key_id`` as another connection sees them (from a plain thread, so a
    synchronous callback can ask while the rewrap's event loop waits)."""
    async def count() -> int:
        engine = create_engine(url)
        try:
            return (await rotation.rows_per_key(engine)).get(key_id, 0)
        finally:
            await engine.dispose()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, count()).result(timeout=60)


async def test_ks_05_rewrap_commits_each_batch_and_reports_progress(
        own_database: Database) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    await seed(own_database.url, ring_of({"k1": k1}, "k1"), 53, f"pr{random.randrange(10**9)}")
    seen: list[tuple[int, int, int, int, int]] = []

    def report(p: rotation.Progress) -> None:
        seen.append((p.total, p.processed, p.succeeded, p.failed,
                     _count_on(own_database.url, "k2")))

    engine = create_engine(own_database.url)
    try:
        progress = await rotation.rewrap(engine, ring_of({"k1": k1, "k2": k2}, "k2"),
                                         batch=10, report=report)
    finally:
        await engine.dispose()
    assert (progress.processed, progress.succeeded, progress.failed) == (53, 53, 0)
    assert len(seen) >= 6  # ceil(53 / 10) batches, each reported
    for total, processed, succeeded, failed, committed in seen:
        assert total == 53 and processed == succeeded + failed
        # What the report says is done is already committed for everyone else to see:
        # one transaction per batch, never one over the whole table.
        assert committed == succeeded
    assert [s[1] for s in seen[:6]] == [10, 20, 30, 40, 50, 53]


async def test_ks_05_a_second_rewrap_exits_already_running(own_postgres: Database,
                                                          tmp_path: Path) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    await seed(own_postgres.url, ring_of({"k1": k1}, "k1"), 3, f"ar{random.randrange(10**9)}")
    ring = ring_of({"k1": k1, "k2": k2}, "k2")
    path = ring_file(tmp_path / "keys.json", {"k1": k1, "k2": k2}, "k2")
    holder = await asyncpg.connect(own_postgres.url, timeout=10)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", rotation.ADVISORY_LOCK)
        engine = create_engine(own_postgres.url)
        try:
            with pytest.raises(rotation.AlreadyRunning):
                await rotation.rewrap(engine, ring)
        finally:
            await engine.dispose()
        proc = _cli(_env(own_postgres, path), "keys", "rewrap", "--quiet")
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode != 0 and "already running" in err
        assert _count_on(own_postgres.url, "k1") == 3  # nothing moved
    finally:
        await holder.close()
    proc = _cli(_env(own_postgres, path), "keys", "rewrap", "--quiet", "--json")
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["succeeded"] == 3


async def test_ks_05_api_traffic_during_a_rewrap_gets_no_5xx(own_postgres: Database) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    tag = f"api{random.randrange(10**9)}"
    n = 1500
    await seed(own_postgres.url, ring_of({"k1": k1}, "k1"), n, tag)
    ring = ring_of({"k1": k1, "k2": k2}, "k2")
    rng = random.Random(5)
    async with _app(_settings(own_postgres), ring) as (app, client):
        token = await _service_token(app)
        engine = create_engine(own_postgres.url)
        try:
            job = asyncio.create_task(rotation.rewrap(engine, ring, batch=100))
            statuses: list[int] = []
            wrong: list[str] = []
            while not job.done():
                i = rng.randrange(n)
                r = await _read(client, token, f"prj_{tag}_{i}", "slack")
                statuses.append(r.status_code)
                if r.status_code == 200 and r.json()["data"]["access_token"] != f"at-{tag}-{i}":
                    wrong.append(r.text)
            progress = await job
        finally:
            await engine.dispose()
    assert progress.failed == 0 and progress.succeeded == n
    assert len(statuses) >= 20, "the rewrap finished before the traffic got going"
    assert set(statuses) == {200} and wrong == []


# -- KS-06 crash-resumable rewrap ------------------------------------------------------------

RUNNER = textwrap.dedent("""
    import asyncio, json, os, signal, sys
    from broker import rotation
    from broker.crypto import KeyRing
    from broker.db import create_engine

    ring = KeyRing.from_json(os.environ["RUNNER_RING"], "RUNNER_RING")
    batch, kill_at, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    handled = 0
    inner = ring.rewrap

    def rewrap(ctx, blob):
        global handled
        handled += 1
        if mode == "row" and handled == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-batch: its transaction is open
        return inner(ctx, blob)

    def report(p):
        print(json.dumps({"total": p.total, "processed": p.processed,
                          "succeeded": p.succeeded, "failed": p.failed}), flush=True)
        if mode == "batch" and p.processed >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # between batches: the last one committed

    ring.rewrap = rewrap

    async def main():
        engine = create_engine(os.environ["RUNNER_URL"])
        try:
            await rotation.rewrap(engine, ring, batch=batch, report=report)
        except rotation.AlreadyRunning:
            sys.exit(75)  # the killed runner's session is still being torn down
        finally:
            await engine.dispose()

    asyncio.run(main())
""")


def _run_runner(url: str, ring_doc: str, batch: int, kill_at: int, mode: str
                ) -> tuple[int, list[dict[str, int]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(RUNNER_URL=url, RUNNER_RING=ring_doc)
    deadline = time.monotonic() + 60
    while True:
        proc = subprocess.run([sys.executable, "-c", RUNNER, str(batch), str(kill_at), mode],
                              env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 75:
            break
        assert time.monotonic() < deadline, "the advisory lock was never released"
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, reports


async def test_ks_06_rewrap_killed_at_random_points_resumes_and_loses_nothing(
        own_postgres: Database) -> None:
    seed_value = 20261204
    rng = random.Random(seed_value)
    k1, k2 = os.urandom(32), os.urandom(32)
    n = 600
    tag = f"kill{random.randrange(10**9)}"
    ids = await seed(own_postgres.url, ring_of({"k1": k1}, "k1"), n, tag)
    before = await _plaintexts(own_postgres.url, ring_of({"k1": k1}, "k1"), ids)
    doc = ring_json({"k1": k1, "k2": k2}, "k2")
    committed, kills = 0, []
    for run in range(20):
        remaining = n - _count_on(own_postgres.url, "k2")
        assert remaining > 0, f"seed {seed_value}: nothing left to kill at run {run}"
        batch = rng.randint(5, 40)
        mode = rng.choice(["row", "batch"])
        kill_at = rng.randint(1, max(1, remaining // 12))
        code, reports = await asyncio.to_thread(
            _run_runner, own_postgres.url, doc, batch, kill_at, mode)
        assert code == -signal.SIGKILL, (seed_value, run, code)
        for r in reports:
            assert r["processed"] == r["succeeded"] + r["failed"] and r["failed"] == 0
            assert r["total"] == remaining
        done = reports[-1]["succeeded"] if reports else 0
        # What the runner last reported is exactly what it had committed.
        assert n - _count_on(own_postgres.url, "k2") == remaining - done, (seed_value, run)
        committed += done
        kills.append((mode, batch, kill_at, done))
    assert sum(1 for mode, *_ in kills if mode == "row") >= 5  # mid-transaction kills too
    code, reports = await asyncio.to_thread(_run_runner, own_postgres.url, doc, 50, 0, "none")
    assert code == 0
    final = reports[-1]
    assert final["total"] == n - committed and final["failed"] == 0
    assert committed + final["succeeded"] == n  # the counters add up
    assert _count_on(own_postgres.url, "k2") == n and _count_on(own_postgres.url, "k1") == 0
    after = await _plaintexts(own_postgres.url, ring_of({"k2": k2}, "k2"), ids)
    assert after == before  # every row decrypts, on the primary, to what it held


async def _plaintexts(url: str, ring: KeyRing, ids: list[str]
                      ) -> dict[str, tuple[str | None, str | None]]:
    engine = create_engine(url)
    out = {}
    try:
        async with sessionmaker(engine)() as s:
            rows = (await s.execute(select(Integration, Credential).join(
                Credential, Credential.integration_id == Integration.id).where(
                Integration.id.in_(ids)))).all()
            for integration, credential in rows:
                opened = store.open_credential(ring, integration, credential)
                out[integration.id] = (opened.access_token, opened.refresh_token)
    finally:
        await engine.dispose()
    assert len(out) == len(ids)
    return out


# -- KS-07 rewrap never loses a concurrent write ---------------------------------------------

async def _churn(url: str, ring: KeyRing, ids: list[str], stop: asyncio.Event
                 ) -> tuple[int, int, dict[str, str]]:
    """Keep reading and refreshing (compare-and-swap writes) random rows; return
    (reads, failed reads, the latest access token written per row)."""
    engine = create_engine(url)
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


async def test_ks_07_rewrap_under_concurrent_refreshes_and_a_sigkill_loses_no_write(
        own_postgres: Database, tmp_path: Path) -> None:
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


async def test_ks_07_a_refresh_blocked_by_the_rewrap_still_lands(
        own_postgres: Database, tmp_path: Path, fakes: tuple[str, FakeState]) -> None:
    """The rewrap holds row R (FOR UPDATE, inside its batch) while a refresh of R spends the
    refresh token at the provider and tries to write: the write waits, loses its
    compare-and-swap to the rewrap's version bump, re-reads and lands. R ends up on the
    primary key with the new tokens."""
    k1, k2 = os.urandom(32), os.urandom(32)
    old, ring = ring_of({"k1": k1}, "k1"), ring_of({"k1": k1, "k2": k2}, "k2")
    providers = tmp_path / "providers.toml"
    providers.write_text(providers_toml(fakes[0]))
    settings = Settings(database_url=own_postgres.url, public_url=PUBLIC,
                        providers_file=providers, provider_timeout=5.0)
    fakes[1].refresh_tokens["rt-seed"] = "read write"
    project = new_project()
    async with _app(settings, ring) as (app, client):
        async with app.state.sessions() as s:
            await store.ensure_project(s, project)
            integration = await store.upsert_integration(
                s, project_id=project, provider="acme", setup_type="oauth")
            await store.write_credential(
                s, old, integration, store.Secrets(access_token="at-seed",
                                                   refresh_token="rt-seed"),
                token_type="bearer", expires_at=utcnow() + timedelta(seconds=30))
            await s.commit()
            row_id = integration.id
        token = await _service_token(app)

        holding, release = threading.Event(), threading.Event()
        job_ring = ring_of({"k1": k1, "k2": k2}, "k2")
        inner = job_ring.rewrap

        def paused_rewrap(ctx: RowContext, blob: bytes) -> bytes:
            holding.set()
            assert release.wait(60)
            return inner(ctx, blob)

        job_ring.rewrap = paused_rewrap  # type: ignore[method-assign]

        async def run_job() -> rotation.Progress:
            engine = create_engine(own_postgres.url)
            try:
                return await rotation.rewrap(engine, job_ring)
            finally:
                await engine.dispose()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            job = pool.submit(asyncio.run, run_job())
            assert await asyncio.to_thread(holding.wait, 60)
            read = asyncio.create_task(_read(client, token, project, "acme"))
            # Wait until the refresh's write is queued behind the rewrap's row lock.
            watcher = await asyncpg.connect(own_postgres.url, timeout=10)
            try:
                deadline = time.monotonic() + 30
                while not await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                        "AND wait_event_type = 'Lock'", own_postgres.name):
                    assert time.monotonic() < deadline and not read.done(), "never blocked"
                    await asyncio.sleep(0.02)
            finally:
                await watcher.close()
            release.set()
            progress = await asyncio.to_thread(job.result, 60)
        r = await read
    assert r.status_code == 200, r.text
    new_access = r.json()["data"]["access_token"]
    assert new_access != "at-seed" and new_access in fakes[1].access_tokens
    assert (progress.succeeded, progress.failed) == (1, 0)
    row = await _row(own_postgres.url, row_id)
    assert row["key_id"] == "k2" and row["version"] == 3  # seeded 1, rewrap 2, refresh 3
    opened = await _plaintexts(own_postgres.url, ring_of({"k2": k2}, "k2"), [row_id])
    access, refresh = opened[row_id]
    assert access == new_access and refresh in fakes[1].refresh_tokens
    assert refresh != "rt-seed"


# -- KS-08 undecryptable rows are reported, never rewritten ----------------------------------

async def test_ks_08_undecryptable_rows_are_reported_and_left_untouched(
        own_database: Database, tmp_path: Path) -> None:
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
    # The command exits non-zero and names the row; with --reencrypt too, and neither run
    # writes a byte of it.
    before = await _row(own_database.url, ids[3])
    path = ring_file(tmp_path / "keys.json", {"k1": k1, "k2": k2}, "k2")
    for extra in ([], ["--reencrypt"]):
        proc = _cli(_env(own_database, path), "keys", "rewrap", "--quiet", "--json", *extra)
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 1, err
        summary = json.loads(out)
        assert (summary["failed"], summary["failed_ids"]) == (1, [ids[3]])
        assert summary["processed"] == summary["succeeded"] + summary["failed"]
        assert await _row(own_database.url, ids[3]) == before
    opened = await open_all(own_database.url, ring_of({"k1": k1, "k2": k2}, "k2"),
                            [i for i in ids if i != ids[3]])
    assert {kid for kid, _ in opened.values()} == {"k2"}


# -- KS-09 retirement gates, Vault's rotation test ported ------------------------------------

def test_ks_09_vault_backend_rotation_ported(tmp_path: Path) -> None:
    """hashicorp/vault builtin/logical/transit/backend_test.go testBackendRotation, with
    ring keys for Vault's key versions and ``disabled`` for ``min_decryption_version``."""
    path = tmp_path / "keys.json"
    kids, sealed = [], []
    for version in range(1, 5):  # 1. encrypt under v1 ... v4
        kid, _ = add_key(path)
        promote_key(path, kid)
        kids.append(kid)
        sealed.append(KeyRing.load(path, None).seal(CTX, {"v": f"v{version}".encode()}))

    def opens(ring: KeyRing) -> list[bool]:
        out = []
        for s in sealed:
            try:
                out.append(ring.open(CTX, s.data_key, s.fields)["v"] is not None)
            except CryptoError:
                out.append(False)
        return out

    assert opens(KeyRing.load(path, None)) == [True] * 4
    # 2. A forged version fails, and says so.
    blob = sealed[0].data_key
    forged = bytes([1, 3]) + b"v99" + blob[2 + blob[1]:]
    with pytest.raises(CryptoError, match="unknown key id 'v99'"):
        KeyRing.load(path, None).open(CTX, forged, sealed[0].fields)
    # 3. "min_decryption_version = 3": v1 and v2 disabled fail, v3 and v4 work.
    for kid in kids[:2]:
        set_disabled(path, kid, True)
    ring = KeyRing.load(path, None)
    assert opens(ring) == [False, False, True, True]
    with pytest.raises(CryptoError, match=f"key id '{kids[0]}' is disabled"):
        ring.open(CTX, sealed[0].data_key, sealed[0].fields)
    with pytest.raises(CryptoError, match="disabled"):  # nor can it be re-wrapped
        ring.rewrap(CTX, sealed[0].data_key)
    # 4. Back to 1: all work again.
    for kid in kids[:2]:
        set_disabled(path, kid, False)
    ring = KeyRing.load(path, None)
    assert opens(ring) == [True] * 4
    # 5. Rewrap: the result is on v4, and still opens to v1's plaintext.
    rewrapped = ring.rewrap(CTX, sealed[0].data_key)
    assert blob_key_id(rewrapped) == kids[3]
    assert ring.open(CTX, rewrapped, sealed[0].fields) == {"v": b"v1"}
    # 6. Deleting (retiring) or disabling the key in use for writes is refused.
    with pytest.raises(ConfigError, match="primary"):
        remove_key(path, kids[3])
    with pytest.raises(ConfigError, match="primary"):
        set_disabled(path, kids[3], True)
    with pytest.raises(ConfigError, match="not in"):
        set_disabled(path, "kmissing", True)
    assert KeyRing.load(path, None).ids == sorted(kids)


def test_ks_09_disable_is_refused_while_rows_use_the_key_and_enable_reverses_it(
        own_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    ids = asyncio.run(seed(own_database.url, ring_of({"k1": k1}, "k1"), 3,
                           f"dis{random.randrange(10**9)}"))
    before = asyncio.run(_row(own_database.url, ids[0]))
    path = ring_file(tmp_path / "keys.json", {"k1": k1, "k2": k2}, "k2")
    env = {"BROKER_KEYS_FILE": str(path), "BROKER_DATABASE_URL": own_database.url}
    unchanged = path.read_text()
    code, _, err = _main(monkeypatch, capsys, "keys", "disable", "k1", **env)
    assert code != 0 and "still protects 3 credentials" in err and "rewrap" in err
    code, _, err = _main(monkeypatch, capsys, "keys", "disable", "k2", **env)
    assert code != 0 and "primary" in err
    code, _, err = _main(monkeypatch, capsys, "keys", "disable", "k7", **env)
    assert code != 0 and "not in" in err
    assert path.read_text() == unchanged
    assert _main(monkeypatch, capsys, "keys", "rewrap", "--quiet", **env)[0] == 0
    code, out, _ = _main(monkeypatch, capsys, "keys", "disable", "k1", **env)
    assert code == 0 and "keys enable k1" in out
    code, out, _ = _main(monkeypatch, capsys, "keys", "status", "--json", **env)
    assert {s["id"]: (s["disabled"], s["rows"]) for s in json.loads(out)} == {
        "k1": (True, 0), "k2": (False, 3)}
    # A blob still under k1 (a backup, say) fails closed, with a reason.
    ctx = RowContext(*_context(own_database.url, ids[0]))
    fields = {"access_token": before["access_token_ct"]}
    with pytest.raises(CryptoError, match="disabled"):
        KeyRing.load(path, None).open(ctx, before["data_key_ct"], fields)
    code, _, _ = _main(monkeypatch, capsys, "keys", "enable", "k1", **env)
    assert code == 0
    assert KeyRing.load(path, None).open(ctx, before["data_key_ct"], fields)["access_token"]
    assert _main(monkeypatch, capsys, "keys", "retire", "k1", **env)[0] == 0
    assert KeyRing.load(path, None).ids == ["k2"]


def _context(url: str, integration_id: str) -> tuple[str, str, str]:
    async def get() -> tuple[str, str, str]:
        engine = create_engine(url)
        try:
            async with sessionmaker(engine)() as s:
                i = await s.get(Integration, integration_id)
                return i.project_id, i.provider, i.id
        finally:
            await engine.dispose()

    return asyncio.run(get())


async def test_ks_09_reads_under_a_disabled_key_fail_closed_through_the_api(
        own_database: Database, caplog: pytest.LogCaptureFixture) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    project = new_project()
    ring = KeyRing([Key("k1", k1, disabled=True), Key("k2", k2)], "k2")
    async with _app(_settings(own_database), ring) as (app, client):
        await _install(app, ring_of({"k1": k1}, "k1"), project, access_token="at-k1")
        token = await _service_token(app)
        with caplog.at_level(logging.ERROR):
            r = await _read(client, token, project, "slack")
    assert r.status_code == 500, r.text  # never "not connected"
    assert r.json()["error"]["code"] == "credential_unreadable"
    _no_secret_in(r.text, "at-k1")
    [record] = [rec for rec in caplog.records if rec.getMessage() == "credential does not decrypt"]
    assert "disabled" in record.reason and record.key_id == "k1"


async def test_ks_09_retire_is_refused_while_rows_use_the_key(own_postgres: Database,
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


# -- KS-10 fail loudly on a wrong key --------------------------------------------------------

async def test_ks_10_a_changed_key_under_a_known_id_fails_readiness_and_reads(
        own_database: Database, caplog: pytest.LogCaptureFixture) -> None:
    good, bad = os.urandom(32), os.urandom(32)
    settings = _settings(own_database)
    project = new_project()
    async with _app(settings, ring_of({"k1": good}, "k1")) as (app, client):
        assert (await client.get("/readyz")).status_code == 200
        row_id = await _install(app, app.state.ring, project, access_token="at-good")
        token = await _service_token(app)
    engine = create_engine(own_database.url)
    try:
        async with sessionmaker(engine)() as s:
            [stored] = list(await s.scalars(select(KeyFingerprint)))
    finally:
        await engine.dispose()
    assert stored.key_id == "k1"
    assert hmac.compare_digest(stored.fingerprint,
                               hmac.new(good, b"kid-check", hashlib.sha256).digest())
    before = await _row(own_database.url, row_id)

    with caplog.at_level(logging.INFO):
        async with _app(settings, ring_of({"k1": bad}, "k1")) as (app, client):
            ready = await client.get("/readyz")
            r = await _read(client, token, project, "slack")
            again = await _read(client, token, project, "slack")
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
    assert "k1" in ready.json()["checks"]["keys"]
    assert "fingerprint" in ready.json()["checks"]["keys"]
    for response in (r, again):  # a decrypt failure, never "not connected"
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "credential_unreadable"
        _no_secret_in(response.text, "at-good")
    assert await _row(own_database.url, row_id) == before  # nothing overwritten
    logged = "\n".join(rec.getMessage() + repr(vars(rec)) for rec in caplog.records)
    assert any("k1" in rec.getMessage() and rec.levelno >= logging.ERROR
               for rec in caplog.records if rec.name == "broker.keycheck")
    for material in (good, bad, stored.fingerprint, hmac.new(bad, b"kid-check",
                                                             hashlib.sha256).digest()):
        for encoded in (material.hex(), base64.b64encode(material).decode(), repr(material)):
            assert encoded not in logged
    # The key never reaches the database: only its fingerprint does.
    dump = _dump(own_database)
    for material in (good, bad):
        for encoded in (material, material.hex().encode(), base64.b64encode(material)):
            assert encoded not in dump


async def test_ks_10_rewrap_refuses_a_ring_that_does_not_match(
        own_database: Database, tmp_path: Path) -> None:
    good, bad, k2 = os.urandom(32), os.urandom(32), os.urandom(32)
    ids = await seed(own_database.url, ring_of({"k1": good}, "k1"), 4,
                     f"fp{random.randrange(10**9)}")
    engine = create_engine(own_database.url)
    try:
        assert await keycheck.verify(engine, ring_of({"k1": good}, "k1")) == []
    finally:
        await engine.dispose()
    before = [await _row(own_database.url, i) for i in ids]
    path = ring_file(tmp_path / "keys.json", {"k1": bad, "k2": k2}, "k2")
    proc = _cli(_env(own_database, path), "keys", "rewrap", "--quiet")
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode != 0 and "k1" in err and "fingerprint" in err
    assert [await _row(own_database.url, i) for i in ids] == before
    # The right ring goes through, and records k2's fingerprint on the way.
    path = ring_file(tmp_path / "keys.json", {"k1": good, "k2": k2}, "k2")
    proc = _cli(_env(own_database, path), "keys", "rewrap", "--quiet")
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    engine = create_engine(own_database.url)
    try:
        assert await keycheck.verify(engine, ring_of({"k2": os.urandom(32)}, "k2")) == ["k2"]
    finally:
        await engine.dispose()


def test_ks_10_repr_shows_key_ids_only() -> None:
    material = os.urandom(32)
    ring = KeyRing.from_json(ring_json({"kA": material}, "kA"), "test")
    shown = repr(ring) + repr(ring._keys) + repr(list(ring._keys.values())) + str(ring)
    assert "kA" in shown
    fingerprint = ring.fingerprints()["kA"]
    for secret in (material, fingerprint):
        for encoding in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert encoding not in shown


def test_ks_10_new_keys_are_256_bit_random(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    for _ in range(3):
        add_key(path)
    secrets_ = [base64.b64decode(k["secret"]) for k in json.loads(path.read_text())["keys"]]
    assert [len(s) for s in secrets_] == [32, 32, 32] and len(set(secrets_)) == 3
    # Not derived from anything guessable, such as a hash of the key id.
    for k in json.loads(path.read_text())["keys"]:
        assert base64.b64decode(k["secret"]) != hashlib.sha256(k["id"].encode()).digest()


def test_ks_10_key_material_comes_from_the_environment(tmp_path: Path) -> None:
    material = base64.b64encode(os.urandom(32)).decode()
    doc = json.dumps({"primary": "k9", "keys": [{"id": "k9", "secret_env": "BROKER_KEY_K9"}]})
    settings = Settings.from_env({"BROKER_KEYS": doc, "BROKER_KEY_K9": material})
    assert settings.ring().primary_id == "k9"
    assert material not in repr(settings)
    with pytest.raises(ConfigError, match="BROKER_KEY_K9, which is not set"):
        Settings.from_env({"BROKER_KEYS": doc}).ring()



# -- KS-11 refresh persistence semantics -----------------------------------------------------

async def test_ks_11_a_refresh_response_without_refresh_token_keeps_the_stored_one(
        f: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes import providers as fake
    from tests.test_credentials import api_for

    def issue_without_refresh_token(state: FakeState, scope: str) -> Any:
        access = "at-" + os.urandom(12).hex()
        state.access_tokens[access] = scope
        return fake._token_response({"access_token": access, "token_type": "Bearer",
                                     "expires_in": 3600, "scope": scope})

    monkeypatch.setattr(fake, "_issue", issue_without_refresh_token)  # on the wire, no RT
    api = await api_for(f, expires_in=timedelta(minutes=2))
    _, before = await api.row()
    r = await api.read()
    assert r.status_code == 200, r.text
    integration, after = await api.row()
    assert after is not None and before is not None and after.version == before.version + 1
    opened = store.open_credential(f.app.state.ring, integration, after)
    assert opened.access_token == r.json()["data"]["access_token"] != "at-seed"
    assert opened.refresh_token == "rt-seed"
    assert after.expires_at is not None and after.expires_at > utcnow() + timedelta(minutes=50)


async def test_ks_11_a_rotated_refresh_token_is_written_with_the_access_token_or_not_at_all(
        f: Flow) -> None:
    from tests.test_credentials import api_for

    # Rotation: all of access token, refresh token and expiry change in one version.
    api = await api_for(f, expires_in=timedelta(minutes=2))
    _, before = await api.row()
    r = await api.read()
    assert r.status_code == 200, r.text
    integration, after = await api.row()
    assert after is not None and before is not None and after.version == before.version + 1
    opened = store.open_credential(f.app.state.ring, integration, after)
    assert opened.access_token == r.json()["data"]["access_token"]
    assert opened.refresh_token in f.fakes.refresh_tokens and opened.refresh_token != "rt-seed"
    assert after.expires_at is not None and before.expires_at is not None
    assert after.expires_at > before.expires_at

    # The same transaction: when its commit fails (here the audit row is refused), none of
    # the three is written; the row is exactly what it was.
    api = await api_for(f, expires_in=timedelta(minutes=2))
    _, before = await api.row()
    kind = "sqlite" if f.app.state.engine.dialect.name == "sqlite" else "postgres"
    name = f"no_refresh_{api.project}"
    if kind == "sqlite":
        ddl = [f"CREATE TRIGGER {name} BEFORE INSERT ON audit_events WHEN NEW.project_id = "
               f"'{api.project}' BEGIN SELECT RAISE(ABORT, 'audit down'); END"]
        drop = [f"DROP TRIGGER {name}"]
    else:
        ddl = [f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
               "$$ BEGIN RAISE EXCEPTION 'audit down'; END $$",
               f"CREATE TRIGGER {name} BEFORE INSERT ON audit_events FOR EACH ROW "
               f"WHEN (NEW.project_id = '{api.project}') EXECUTE FUNCTION {name}()"]
        drop = [f"DROP TRIGGER {name} ON audit_events", f"DROP FUNCTION {name}()"]
    async with f.app.state.engine.begin() as conn:
        for statement in ddl:
            await conn.execute(text(statement))
    try:
        r = await api.read()
    finally:
        async with f.app.state.engine.begin() as conn:
            for statement in drop:
                await conn.execute(text(statement))
    assert r.status_code >= 500 and "rt-seed" not in r.text
    _, unchanged = await api.row()
    assert unchanged is not None
    for column in ("version", "access_token_ct", "refresh_token_ct", "data_key_ct",
                   "expires_at", "key_id"):
        assert getattr(unchanged, column) == getattr(before, column), column


# -- KS-12 disconnect wipes secrets ----------------------------------------------------------

async def _credential_rows(f: Flow, integration_id: str) -> int:
    async with f.app.state.sessions() as s:
        return len(list(await s.scalars(select(Credential).where(
            Credential.integration_id == integration_id))))


async def test_ks_12_disconnect_deletes_the_ciphertext_and_revokes_the_refresh_token(
        f: Flow) -> None:
    from tests.test_credentials import api_for

    api = await api_for(f)
    integration, credential = await api.row()
    assert credential is not None and await _credential_rows(f, integration.id) == 1
    r = await api.delete("?revoke=true")
    assert r.status_code == 200, r.text
    assert (r.json()["data"]["revoked"], r.json()["data"]["revocation_error"]) == (
        ["refresh_token"], None)
    [sent] = f.fakes.revoke_requests
    assert (sent["body"]["token"], sent["body"]["token_type_hint"]) == (
        "rt-seed", "refresh_token")
    assert "rt-seed" not in f.fakes.refresh_tokens
    integration, credential = await api.row()
    assert integration.status == "disconnected" and credential is None
    assert await _credential_rows(f, integration.id) == 0  # no ciphertext left behind


async def test_ks_12_without_a_refresh_token_the_access_token_is_revoked(f: Flow) -> None:
    from tests.test_credentials import api_for

    api = await api_for(f, refresh_token=None)
    r = await api.delete("?revoke=true")
    assert r.json()["data"]["revoked"] == ["access_token"]
    [sent] = f.fakes.revoke_requests
    assert (sent["body"]["token"], sent["body"]["token_type_hint"]) == (
        "at-seed", "access_token")
    assert (await api.row())[1] is None


async def test_ks_12_an_already_invalid_token_counts_as_revoked(f: Flow) -> None:
    from tests.test_credentials import api_for

    api = await api_for(f)
    f.fakes.refresh_tokens.pop("rt-seed")  # the provider no longer knows it: RFC 7009 200
    r = await api.delete("?revoke=true")
    data = r.json()["data"]
    assert (data["revoked"], data["revocation_error"]) == (["refresh_token"], None)
    assert len(f.fakes.revoke_requests) == 1 and (await api.row())[1] is None


async def test_ks_12_a_failed_revocation_still_wipes_and_is_recorded(f: Flow) -> None:
    from tests.test_credentials import api_for

    api = await api_for(f)
    f.fakes.client_auth_method = "client_secret_post"  # the broker sends Basic: refused
    r = await api.delete("?revoke=true", acting="ak_ops")
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["status"] == "disconnected" and data["revoked"] == []
    assert data["revocation_error"] == "provider_refused"
    assert len(f.fakes.revoke_requests) == 1
    integration, credential = await api.row()
    assert credential is None and await _credential_rows(f, integration.id) == 0
    async with f.app.state.sessions() as s:
        [event] = list(await s.scalars(select(AuditEvent).where(
            AuditEvent.project_id == api.project,
            AuditEvent.type == "integration.disconnected")))
    assert event.details["revocation_error"] == "provider_refused"
    assert event.details["credential_destroyed"] is True
