"""Security checklist F (fault tolerance, FT-02 to FT-05) and G (concurrency, CC-01 to CC-07):
refresh storms, lost races, locks, fencing, faults during a refresh.

The provider is the fake RFC 6749 server over real loopback HTTP (it rotates refresh tokens
and refuses a spent one); the database is SQLite and PostgreSQL (FT-03 uses a PostgreSQL
database of its own with a trigger that makes the commit fail); Redis is the machine's for
lock tests and a throwaway server of our own for FT-04, which stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest
import redis as sync_redis
from asgi_lifespan import LifespanManager
from sqlalchemy import select, update

from broker import checks, credentials, flow, store, worker
from broker.app import create_app
from broker.crypto import KeyRing
from broker.db import utcnow
from broker.errors import ConfigError
from broker.models import AuditEvent, Credential, Integration
from broker.settings import Settings
from broker.spec import Request
from broker.state import MemoryState, RedisState, StateStore
from tests.conftest import Database, new_project, service_missing
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import FakeState
from tests.security.test_fault_injection import ThrowawayRedis
from tests.test_connect import APP, PUBLIC, Flow, flow_settings, make_flow, providers_toml  # noqa: F401
from tests.test_credentials import Api, api_for, installed, refreshes, service_token
from tests.test_multiprocess import _seed, brokers  # noqa: F401

pytestmark = pytest.mark.anyio
REDIS = "redis://127.0.0.1:6379/0"


@contextlib.asynccontextmanager
async def running(settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState],
                  state_store: StateStore | None = None) -> AsyncIterator[Flow]:
    """A broker app for the block (several may share one database)."""
    flows = make_flow(settings, ring, fakes, state_store=state_store)
    try:
        yield await anext(flows)
    finally:
        await flows.aclose()


@pytest.fixture
async def f(flow_settings: Settings, ring: KeyRing,  # noqa: F811
            fakes: tuple[str, FakeState]) -> AsyncIterator[Flow]:
    async with running(flow_settings, ring, fakes) as value:
        yield value


@pytest.fixture
async def hasty(flow_settings: Settings, ring: KeyRing,  # noqa: F811
                fakes: tuple[str, FakeState]) -> AsyncIterator[Flow]:
    """A broker that waits half a second for a provider (tests of hanging providers)."""
    async with running(replace(flow_settings, provider_timeout=0.5), ring, fakes) as value:
        yield value


async def redis_state() -> RedisState:
    state = RedisState(REDIS)
    if not await state.ping():
        await state.close()
        service_missing("Redis at 127.0.0.1:6379")
    return state


async def sibling_write(f: Flow, integration_id: str, version: int, *,
                        access: str = "at-sibling", refresh: str = "rt-sibling") -> bool:
    """What another process does when it wins: a compare-and-swap of fresh tokens."""
    async with f.app.state.sessions() as s:
        row = await s.get(Integration, integration_id)
        written = await store.swap_credential(
            s, f.app.state.ring, row, expected_version=version,
            secrets=store.Secrets(access_token=access, refresh_token=refresh),
            token_type="bearer", scopes=["read"], expires_at=utcnow() + timedelta(hours=1))
        await s.commit()
        return written


async def wait_for(condition: Any, what: str, seconds: float = 10.0) -> None:
    """Synchronise with something the code under test does (not an assertion on time)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def spent(f: Flow, refresh_token: str) -> int:
    """Refresh requests that presented ``refresh_token`` (the database is shared with other
    tests, whose integrations a worker sweep may refresh too)."""
    return sum(r["body"].get("refresh_token") == refresh_token for r in refreshes(f))


def opened(f: Flow, integration: Integration, credential: Credential | None) -> store.Secrets:
    assert credential is not None
    return store.open_credential(f.app.state.ring, integration, credential)


# -- F. Fault tolerance ------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "status", "code"), [
    ("server_error", 503, "refresh_failed"), ("hang", 504, "provider_timeout")])
async def test_ft_02_provider_down_during_a_refresh_keeps_the_grant_and_backs_off(
        hasty: Flow, mode: str, status: int, code: str) -> None:
    f = hasty
    f.fakes.token_mode = mode
    seed = f"rt-{secrets.token_hex(4)}"
    api = await api_for(f, expires_in=timedelta(seconds=-1), refresh_token=seed)
    _, before = await api.row()
    assert before is not None
    r = await api.read()
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    integration, after = await api.row()
    assert after is not None
    # Still connected, same tokens; the failure counted and a cooldown set.
    assert (integration.status, integration.health_status) == ("active", "degraded")
    assert (after.access_token_ct, after.refresh_token_ct, after.version) == (
        before.access_token_ct, before.refresh_token_ct, before.version)
    assert after.refresh_failures == 1
    assert after.retry_at is not None and after.retry_at > utcnow() + timedelta(seconds=10)
    # Throttled: reads wait out the cooldown without calling the provider.
    for _ in range(5):
        r = await api.read()
        assert (r.status_code, r.json()["error"]["code"]) == (503, "refresh_failed")
    assert spent(f, seed) == 1
    # After the cooldown it tries again; a second failure is still not a dead grant.
    async with f.app.state.sessions() as s:
        await s.execute(update(Credential).where(Credential.integration_id == integration.id)
                        .values(retry_at=utcnow() - timedelta(seconds=1)))
        await s.commit()
    assert (await api.read()).status_code == status
    integration, after = await api.row()
    assert after is not None and after.refresh_failures == 2
    assert integration.health_status == "degraded" and spent(f, seed) == 2
    # The provider is back: the same grant refreshes and the counter resets.
    f.fakes.token_mode = "ok"
    async with f.app.state.sessions() as s:
        await s.execute(update(Credential).where(Credential.integration_id == integration.id)
                        .values(retry_at=utcnow() - timedelta(seconds=1)))
        await s.commit()
    r = await api.read()
    assert r.status_code == 200, r.text
    assert r.json()["data"]["access_token"] in f.fakes.access_tokens
    integration, after = await api.row()
    assert after is not None and (after.refresh_failures, after.retry_at) == (0, None)
    assert integration.health_status == "healthy"


FAULT = [
    # nextval() is not undone by the rollback of the failing transaction, so the sequence
    # counts every attempt to commit a new credential version.
    "CREATE SEQUENCE credential_write_attempts",
    "CREATE TABLE credential_write_fault (failures integer NOT NULL)",
    "INSERT INTO credential_write_fault VALUES (0)",
    """CREATE FUNCTION fail_credential_write() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF nextval('credential_write_attempts') <= (SELECT failures FROM credential_write_fault)
      THEN RAISE EXCEPTION 'injected: commit of a credential write refused';
      END IF;
      RETURN NULL;
    END $$""",
    # Deferred: it runs at COMMIT, so the commit itself fails, after the UPDATE succeeded.
    """CREATE CONSTRAINT TRIGGER fail_credential_write AFTER UPDATE ON credentials
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.version > OLD.version)
    EXECUTE FUNCTION fail_credential_write()""",
]


@pytest.mark.parametrize("failures", [1, 2, "always"])
async def test_ft_03_a_failed_write_after_rotation_is_retried_and_never_resends_the_old_token(
        own_postgres: Database, ring: KeyRing, fakes: tuple[str, FakeState], tmp_path: Path,
        caplog: pytest.LogCaptureFixture, failures: int | str) -> None:
    caplog.set_level(logging.DEBUG)
    providers = tmp_path / "providers.toml"
    providers.write_text(providers_toml(fakes[0]))
    settings = Settings(database_url=own_postgres.url, public_url=PUBLIC,
                        providers_file=providers, return_url_allowlist=(APP,),
                        provider_timeout=3.0)
    admin = await asyncpg.connect(own_postgres.url, timeout=5)
    try:
        for statement in FAULT:
            await admin.execute(statement)
        async with running(settings, ring, fakes) as f:
            api = await api_for(f, expires_in=timedelta(seconds=-1))
            integration, before = await api.row()
            assert before is not None
            await admin.execute("UPDATE credential_write_fault SET failures = $1",
                                1000 if failures == "always" else failures)
            reading = asyncio.create_task(api.read())

            async def attempts() -> int:
                value, called = await admin.fetchrow(
                    "SELECT last_value, is_called FROM credential_write_attempts")
                return int(value) if called else 0

            if failures == "always":
                # The retries run under the refresh lock: no other process may refresh now.
                while await attempts() < 2:
                    assert not reading.done(), (await reading).text
                    await asyncio.sleep(0.02)
                name = f"refresh:{integration.id}"
                assert await f.app.state.state_store.acquire(name, 1000) is None
            r = await reading
            [sent] = refreshes(f)  # one refresh, with the seed; the seed is never sent again
            assert sent["body"]["refresh_token"] == "rt-seed"
            assert "rt-seed" not in f.fakes.refresh_tokens  # the provider rotated it
            [minted] = f.fakes.refresh_tokens
            if failures != "always":
                assert r.status_code == 200, r.text
                assert await attempts() == int(failures) + 1
                integration, after = await api.row()
                assert opened(f, integration, after).refresh_token == minted
                assert r.json()["data"]["access_token"] == opened(f, integration,
                                                                  after).access_token
                assert integration.health_status == "healthy"
                return

            assert (r.status_code, r.json()["error"]["code"]) == (503, "refresh_unpersisted")
            assert await attempts() > 2  # retried with backoff before giving up
            integration, after = await api.row()
            assert after is not None and after.version == before.version
            assert integration.health_status == "reauth_required"
            assert integration.error_message and "refresh_unpersisted" in integration.error_message
            async with f.app.state.sessions() as s:
                [event] = list(await s.scalars(select(AuditEvent).where(
                    AuditEvent.integration_id == integration.id,
                    AuditEvent.type == "credential.refresh_unpersisted")))
            alerts = [rec for rec in caplog.records
                      if getattr(rec, "alert", None) == "refresh_unpersisted"]
            assert alerts and alerts[0].levelno >= logging.ERROR
            # No token value in the alert, the audit row or any log line.
            secrets_ = {"rt-seed", "at-seed", minted, *f.fakes.access_tokens}
            dumped = json.dumps(event.details) + caplog.text
            assert not [s for s in secrets_ if s in dumped]
            # The spent seed is never presented again: reads, the worker, even after the
            # database heals. Only a reconnect brings the integration back.
            await admin.execute("UPDATE credential_write_fault SET failures = 0")
            for _ in range(3):
                r = await api.read()
                assert (r.status_code, r.json()["error"]["code"]) == (409, "reauth_required")
            await worker.sweep(f.app.state, f.app.state.credentials)
            assert len(refreshes(f)) == 1
    finally:
        await admin.close()


async def test_ft_04_redis_down_never_refreshes_without_the_lock(
        flow_settings: Settings, ring: KeyRing,  # noqa: F811
        fakes: tuple[str, FakeState], tmp_path: Path) -> None:
    """Two broker processes' worth of apps on one database, their Redis stopped: ten
    concurrent reads of an expired token make no refresh (a 503), ten reads of a token that
    is about to expire get it as it is; with Redis back, one refresh."""
    server = ThrowawayRedis(tmp_path)
    server.start()
    try:
        settings = replace(flow_settings, redis_url=server.url)
        async with running(settings, ring, fakes, RedisState(server.url)) as a, \
                running(settings, ring, fakes, RedisState(server.url)) as b:
            token = await service_token(a)
            expired_project, _ = await installed(a, expires_in=timedelta(seconds=-1))
            expiring_project, _ = await installed(a, expires_in=timedelta(minutes=2),
                                                  refresh_token="rt-other")
            expired = [Api(x, token, expired_project) for x in (a, b)]
            expiring = [Api(x, token, expiring_project) for x in (a, b)]
            _, before = await expired[0].row()
            assert before is not None
            server.stop()

            results = await asyncio.gather(*(expired[i % 2].read() for i in range(10)))
            assert [(r.status_code, r.json()["error"]["code"]) for r in results] == [
                (503, "lock_unavailable")] * 10
            results = await asyncio.gather(*(expiring[i % 2].read() for i in range(10)))
            assert {r.status_code for r in results} == {200}
            assert {r.json()["data"]["access_token"] for r in results} == {"at-seed"}
            assert len(refreshes(a)) == 0
            _, after = await expired[0].row()
            assert after is not None and after.version == before.version

            server.start()
            deadline = asyncio.get_running_loop().time() + 10
            while not await a.app.state.state_store.ping():
                assert asyncio.get_running_loop().time() < deadline, "Redis did not come back"
                await asyncio.sleep(0.05)
            results = await asyncio.gather(*(expired[i % 2].read() for i in range(10)))
            assert {r.status_code for r in results} == {200}, [r.text for r in results]
            assert len({r.json()["data"]["access_token"] for r in results}) == 1
            assert [r["body"]["refresh_token"] for r in refreshes(a)] == ["rt-seed"]
    finally:
        server.stop()


async def test_ft_05_the_refresh_deadline_is_shorter_than_the_lock_ttl(
        flow_settings: Settings, ring: KeyRing) -> None:  # noqa: F811
    defaults = Settings(database_url="sqlite://")
    credentials.check_timeouts(defaults)
    assert credentials.refresh_deadline(defaults) < credentials.LOCK_TTL
    assert credentials.refresh_deadline(flow_settings) < credentials.LOCK_TTL
    too_slow = replace(flow_settings, provider_timeout=credentials.LOCK_TTL
                       - credentials.PERSIST_SECONDS)
    with pytest.raises(ConfigError, match="lifetime"):
        credentials.check_timeouts(too_slow)
    # Checked when the broker starts, not when the first refresh runs.
    with pytest.raises(ConfigError):
        async with LifespanManager(create_app(too_slow, ring=ring)):
            pass


async def test_ft_05_a_hanging_provider_is_a_504_and_the_lock_is_released(hasty: Flow
                                                                          ) -> None:
    hasty.fakes.token_mode = "hang"  # the fake holds the request for 30 s
    api = await api_for(hasty, expires_in=timedelta(seconds=-1))
    integration, _ = await api.row()
    r = await api.read()
    assert (r.status_code, r.json()["error"]["code"]) == (504, "provider_timeout")
    assert len(refreshes(hasty)) == 1
    state = hasty.app.state.state_store
    owner = await state.acquire(f"refresh:{integration.id}", 1000)
    assert owner is not None  # released, not left to expire
    await state.release(f"refresh:{integration.id}", owner)


@contextlib.asynccontextmanager
async def dripping() -> AsyncIterator[str]:
    """An HTTP server that answers every request with a 200 whose body arrives one byte every
    50 ms, for ever: each read is quick, the response never ends."""
    stop = asyncio.Event()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000\r\n\r\n{")
            while not stop.is_set():
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client gave up and closed the connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        server.close()
        await asyncio.gather(*handlers)
        await server.wait_closed()


async def test_ft_05_every_provider_call_is_bounded_as_a_whole(f: Flow) -> None:
    acme = f.app.state.providers["acme"]
    client = f.app.state.clients["acme"]
    async with dripping() as url, httpx2.AsyncClient(timeout=0.5, trust_env=False) as http:
        provider = replace(acme, token_url=f"{url}/token", revoke_url=f"{url}/revoke")
        # Each outcome must come from the broker's own bound; the guard only keeps a broken
        # build from hanging the run.
        with pytest.raises(flow.ExchangeError) as refused:
            await asyncio.wait_for(flow.refresh(provider, client, refresh_token="rt-x",
                                                inputs={}, timeout=0.5), 20)
        assert refused.value.code == "timeout"
        for style in ("rfc7009", "bearer"):
            assert not await asyncio.wait_for(flow.revoke(
                http, replace(provider, revoke_style=style), client, token="rt-x",
                hint="refresh_token", inputs={}), 20)
        with pytest.raises(checks.NotVerified):
            await asyncio.wait_for(checks.run(http, provider, Request(url=f"{url}/me"),
                                              {"access_token": "at-x"}), 20)
    # Connect and read are bounded by the provider timeout on every client the broker uses.
    timeout = f.app.state.settings.provider_timeout
    assert (f.app.state.http.timeout.connect, f.app.state.http.timeout.read) == (
        timeout, timeout)
    async with flow._OAuthClient(acme, client, timeout) as oauth:
        assert (oauth.timeout.connect, oauth.timeout.read) == (timeout, timeout)


# -- G. Concurrency ----------------------------------------------------------------------------

def test_cc_01_refresh_storm_across_two_processes_makes_one_provider_call(
        brokers: tuple[list[str], KeyRing], own_postgres: Database,  # noqa: F811
        fakes: tuple[str, FakeState]) -> None:
    urls, ring = brokers
    _, state = fakes
    state.token_mode, state.slow_seconds = "slow", 0.5  # the storm arrives mid-refresh
    project, token = asyncio.run(_seed(own_postgres, ring, state))

    async def storm() -> list[httpx2.Response]:
        limits = httpx2.Limits(max_connections=200)
        async with httpx2.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:
            path = f"/internal/v1/projects/{project}/integrations/acme/credentials"
            return await asyncio.gather(*(
                client.get(urls[i % 2] + path, headers={"Authorization": f"Bearer {token}"})
                for i in range(200)))

    results = asyncio.run(storm())
    failed = {r.text for r in results if r.status_code != 200}
    assert {r.status_code for r in results} == {200}, failed
    tokens = {r.json()["data"]["access_token"] for r in results}
    assert len(tokens) == 1 and tokens != {"at-expired"}
    refreshes = [r for r in state.token_requests if r["grant_type"] == "refresh_token"]
    assert len(refreshes) == 1
    assert tokens <= set(state.access_tokens)


async def test_cc_01_after_taking_the_lock_a_refresh_already_done_is_not_repeated(
        f: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    api = await api_for(f, expires_in=timedelta(seconds=-1))
    integration, credential = await api.row()
    assert credential is not None
    state = f.app.state.state_store
    acquire = state.acquire

    async def sibling_finished_just_before(name: str, ttl_ms: int) -> str | None:
        # Another process refreshed and released the lock between this reader's read of
        # the row and its taking of the lock.
        assert await sibling_write(f, integration.id, credential.version)
        return await acquire(name, ttl_ms)

    monkeypatch.setattr(state, "acquire", sibling_finished_just_before)
    r = await api.read()
    assert r.status_code == 200 and r.json()["data"]["access_token"] == "at-sibling"
    assert refreshes(f) == []


async def test_cc_01_a_reader_waiting_for_the_lock_re_reads_and_never_steals_it(
        f: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials, "LOCK_TTL", 1.0)  # how long a reader waits
    api = await api_for(f, expires_in=timedelta(seconds=-1))
    integration, credential = await api.row()
    assert credential is not None
    state, name = f.app.state.state_store, f"refresh:{integration.id}"
    sibling = await state.acquire(name, 60_000)  # another process, slow at the provider
    assert sibling is not None
    # The wait times out: a 503, no provider call, and the lock is still the sibling's.
    r = await api.read()
    assert (r.status_code, r.json()["error"]["code"]) == (503, "refresh_busy")
    assert refreshes(f) == [] and await state.acquire(name, 1000) is None
    # The sibling writes while still holding the lock: the waiting reader takes its token.
    reading = asyncio.create_task(api.read())
    await asyncio.sleep(0.2)
    assert not reading.done()
    assert await sibling_write(f, integration.id, credential.version)
    r = await reading
    assert r.status_code == 200 and r.json()["data"]["access_token"] == "at-sibling"
    assert refreshes(f) == []
    await state.release(name, sibling)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_cc_02_locks_extend_only_for_their_owner(kind: str) -> None:
    state = MemoryState() if kind == "memory" else await redis_state()
    try:
        name = f"test-lock-{id(state)}"
        owner = await state.acquire(name, 200)
        assert owner is not None and await state.acquire(name, 200) is None
        assert await state.extend(name, owner, 1000)
        assert not await state.extend(name, "someone-else", 1000)
        await asyncio.sleep(0.4)  # past the first lifetime: the extension holds it
        assert await state.acquire(name, 200) is None
        await state.release(name, "someone-else")  # not the owner: no effect
        assert await state.acquire(name, 200) is None
        await state.release(name, owner)
        assert await state.acquire(name, 200) is not None
    finally:
        await state.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_cc_02_a_holder_whose_lease_expired_cannot_release_or_extend_the_next_one(
        kind: str) -> None:
    state = MemoryState() if kind == "memory" else await redis_state()
    name = f"test-lease-{id(state)}"
    try:
        first = await state.acquire(name, 100)
        assert first is not None
        await asyncio.sleep(0.25)  # the first holder stalls past its lease
        second = await state.acquire(name, 10_000)
        assert second is not None and second != first
        await state.release(name, first)
        assert not await state.extend(name, first, 10_000)
        assert await state.acquire(name, 10_000) is None  # still the second holder's
        if kind == "redis":
            # SET NX PX with the owner's random token as the value.
            with sync_redis.Redis.from_url(REDIS) as raw:
                assert raw.get(f"broker:lock:{name}") == second.encode()
                assert 0 < raw.pttl(f"broker:lock:{name}") <= 10_000
            assert len(second) == 32 and int(second, 16) >= 0
        assert await state.extend(name, second, 10_000)
        await state.release(name, second)
        assert await state.acquire(name, 100) is not None
    finally:
        await state.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_cc_02_a_refresh_whose_lease_was_taken_over_does_not_call_the_provider(
        flow_settings: Settings, ring: KeyRing,  # noqa: F811
        fakes: tuple[str, FakeState], monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    state = MemoryState() if kind == "memory" else await redis_state()
    async with running(flow_settings, ring, fakes, state) as f:
        monkeypatch.setattr(credentials, "LOCK_TTL", 0.2)
        api = await api_for(f, expires_in=timedelta(seconds=-1))
        integration, _ = await api.row()
        name = f"refresh:{integration.id}"
        acquire = state.acquire
        taken_over: list[str] = []

        async def stall_past_the_lease(lock: str, ttl_ms: int) -> str | None:
            owner = await acquire(lock, ttl_ms)
            await asyncio.sleep(ttl_ms / 1000 + 0.2)  # a stall (GC, a slow database)
            other = await acquire(lock, 60_000)  # its lease expired: another worker's now
            assert other is not None
            taken_over.append(other)
            return owner

        monkeypatch.setattr(state, "acquire", stall_past_the_lease)
        r = await api.read()
        assert (r.status_code, r.json()["error"]["code"]) == (503, "refresh_busy")
        assert refreshes(f) == []
        monkeypatch.setattr(state, "acquire", acquire)
        # Its release on the way out left the other worker's lock alone.
        assert await state.acquire(name, 1000) is None
        await state.release(name, taken_over[0])


async def test_cc_03_a_stale_refresh_answer_is_dropped_and_never_overwrites(
        f: Flow, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    api = await api_for(f, expires_in=timedelta(seconds=-1))
    integration, credential = await api.row()
    assert credential is not None
    real_refresh = flow.refresh

    async def slow_answer(*args: Any, **kwargs: Any) -> Any:
        answer = await real_refresh(*args, **kwargs)
        # Before this answer is written, another worker stores newer tokens.
        assert await sibling_write(f, integration.id, credential.version)
        return answer

    monkeypatch.setattr(flow, "refresh", slow_answer)
    r = await api.read()
    assert r.status_code == 200 and r.json()["data"]["access_token"] == "at-sibling"
    integration, after = await api.row()
    assert after is not None and after.version == credential.version + 1  # the sibling's only
    assert opened(f, integration, after).refresh_token == "rt-sibling"
    [dropped] = [rec for rec in caplog.records if rec.getMessage().startswith(
        "refresh result dropped")]
    assert dropped.integration_id == integration.id  # type: ignore[attr-defined]
    assert not [t for t in f.fakes.refresh_tokens if t in caplog.text]


async def test_cc_03_token_writes_are_conditional_on_the_version_read(f: Flow) -> None:
    api = await api_for(f)
    integration, credential = await api.row()
    assert credential is not None
    assert await sibling_write(f, integration.id, credential.version)
    _, newer = await api.row()
    # A writer that read the old version updates no row.
    assert not await sibling_write(f, integration.id, credential.version, access="at-stale",
                                   refresh="rt-stale")
    integration, now = await api.row()
    assert now is not None and newer is not None
    assert (now.version, now.access_token_ct, now.refresh_token_ct) == (
        newer.version, newer.access_token_ct, newer.refresh_token_ct)
    assert opened(f, integration, now).access_token == "at-sibling"


async def test_cc_04_lost_race_invalid_grant_uses_the_siblings_token(
        f: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sibling process refreshed (and wrote) while this one spent the same old token."""
    api = await api_for(f, expires_in=timedelta(seconds=-1))
    integration, credential = await api.row()
    assert credential is not None

    async def sibling_wins(*args: Any, **kwargs: Any) -> Any:
        assert await sibling_write(f, integration.id, credential.version)
        raise flow.ExchangeError("invalid_grant", "spent")

    monkeypatch.setattr(flow, "refresh", sibling_wins)
    r = await api.read()
    assert r.status_code == 200 and r.json()["data"]["access_token"] == "at-sibling"
    integration, _ = await api.row()
    assert integration.health_status == "healthy"


async def test_cc_04_unchanged_token_invalid_grant_requires_reauth_and_keeps_the_row(
        f: Flow) -> None:
    api = await api_for(f, expires_in=timedelta(seconds=-1), refresh_token="rt-unknown")
    f.fakes.refresh_tokens.pop("rt-unknown")
    r = await api.read()
    assert (r.status_code, r.json()["error"]["code"]) == (409, "reauth_required")
    integration, credential = await api.row()
    assert integration.health_status == "reauth_required" and credential is not None
    assert integration.status == "active"  # a refresh failure never deletes or disconnects
    for _ in range(3):
        r = await api.read()
        assert (r.status_code, r.json()["error"]["code"]) == (409, "reauth_required")
    assert len(refreshes(f)) == 1
    async with f.app.state.sessions() as s:
        types = list(await s.scalars(select(AuditEvent.type).where(
            AuditEvent.project_id == api.project)))
    assert "integration.reauth_required" in types


async def test_cc_04_invalid_grant_after_a_key_rewrap_is_not_mistaken_for_a_lost_race(
        f: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrap bumps the version but keeps the tokens: the refusal is about this grant."""
    api = await api_for(f, expires_in=timedelta(seconds=-1))
    integration, credential = await api.row()
    assert credential is not None

    async def rewrapped_then_refused(*args: Any, **kwargs: Any) -> Any:
        async with f.app.state.sessions() as s:
            await s.execute(update(Credential).where(
                Credential.integration_id == integration.id).values(
                version=Credential.version + 1))
            await s.commit()
        raise flow.ExchangeError("invalid_grant", "revoked by the user")

    monkeypatch.setattr(flow, "refresh", rewrapped_then_refused)
    r = await api.read()
    assert (r.status_code, r.json()["error"]["code"]) == (409, "reauth_required")
    integration, after = await api.row()
    assert integration.health_status == "reauth_required" and after is not None


async def test_cc_05_a_dead_grant_gets_no_retry_storm(f: Flow) -> None:
    seed = f"rt-{secrets.token_hex(4)}"
    api = await api_for(f, expires_in=timedelta(seconds=-1), refresh_token=seed)
    f.fakes.refresh_tokens.pop(seed)  # revoked at the provider
    first = await api.read()
    assert (first.status_code, first.json()["error"]["code"]) == (409, "reauth_required")
    assert len(refreshes(f)) == 1
    for _ in range(10):
        results = await asyncio.gather(*(api.read() for _ in range(100)))
        assert {(r.status_code, r.json()["error"]["code"]) for r in results} == {
            (409, "reauth_required")}
    assert len(refreshes(f)) == 1  # none of the 1,000 reads asked again
    await worker.sweep(f.app.state, f.app.state.credentials)
    assert spent(f, seed) == 1  # nor the worker
    # A reinstall through the browser brings it back, without a refresh.
    f.fakes.auto_approve = True
    start = await f.get(await f.install_url(api.project, "acme"))
    callback = (await f.get(start.headers["location"])).headers["location"]
    done = await f.get(callback)
    assert done.headers["location"].endswith("status=success&provider=acme")
    r = await api.read()
    assert r.status_code == 200 and r.json()["data"]["access_token"] in f.fakes.access_tokens
    assert spent(f, seed) == 1


@pytest.mark.parametrize("revoke", [False, True])
async def test_cc_07_disconnect_during_a_refresh_wins_and_the_minted_token_is_revoked(
        f: Flow, revoke: bool) -> None:
    f.fakes.token_mode = "slow"
    f.fakes.slow_seconds = 1.0
    api = await api_for(f, expires_in=timedelta(seconds=-1))
    reading = asyncio.create_task(api.read())
    await wait_for(lambda: refreshes(f), "the refresh to reach the provider")
    r = await api.delete("?revoke=true" if revoke else "")
    assert r.status_code == 200 and r.json()["data"]["status"] == "disconnected"
    read = await reading
    assert (read.status_code, read.json()["error"]["code"]) == (409, "integration_disconnected")
    integration, credential = await api.row()
    assert integration.status == "disconnected" and credential is None  # no ciphertext
    assert len(refreshes(f)) == 1
    # No refresh token the broker was given is still live at the provider.
    assert f.fakes.refresh_tokens == {}
    minted = [req["body"] for req in f.fakes.revoke_requests
              if req["body"]["token"] != "rt-seed"]
    if revoke:
        # The disconnect revoked the seed before the provider got to the refresh, which it
        # then refused: nothing was minted.
        assert minted == [] and [req["body"]["token"] for req in f.fakes.revoke_requests] == [
            "rt-seed"]
    else:
        # The provider rotated the seed; the refresh token it minted for the losing refresh
        # was revoked there.
        [body] = minted
        assert body["token"].startswith("rt-") and body["token_type_hint"] == "refresh_token"


async def started_install(f: Flow, project: str) -> tuple[httpx2.AsyncClient, str]:
    """A browser of its own (its own binding cookie) that went through consent; returns it
    and the callback URL the provider sent it to, not yet opened."""
    transport = httpx2.ASGITransport(app=f.browser._transport.app)  # the same broker
    browser = httpx2.AsyncClient(transport=transport, base_url=PUBLIC)
    r = await browser.post(f"/v1/projects/{project}/integrations/acme/install-url",
                           json={"return_url": f"{APP}/done"},
                           headers={"X-API-Key": await f.key(project)})
    start = await browser.get(r.json()["data"]["install_url"])
    assert start.status_code == 302, start.text
    async with httpx2.AsyncClient(trust_env=False) as provider:
        back = await provider.get(start.headers["location"])
    return browser, back.headers["location"]


async def test_cc_06_two_callbacks_with_the_same_state_install_once(f: Flow) -> None:
    f.fakes.auto_approve = True
    project = new_project()
    browser, callback = await started_install(f, project)
    try:
        results = await asyncio.gather(browser.get(callback), browser.get(callback))
    finally:
        await browser.aclose()
    assert sorted(r.status_code for r in results) == [302, 400]
    [done] = [r for r in results if r.status_code == 302]
    assert done.headers["location"].endswith("status=success&provider=acme")
    assert [r["grant_type"] for r in f.fakes.token_requests] == ["authorization_code"]
    [integration] = await f.integrations(project)
    assert [e.type for e in await f.events(project)] == ["integration.installed"]
    async with f.app.state.sessions() as s:
        assert await s.get(Credential, integration.id) is not None


async def test_cc_06_concurrent_installs_of_one_provider_leave_one_integration(
        f: Flow) -> None:
    """Two browsers finish installs of the same provider in the same project at once: one
    integration row and one credential; the install that lost the race is the reinstall it
    now is, so both complete, each with its audit row."""
    f.fakes.auto_approve = True
    project = new_project()
    (first, one), (second, two) = [await started_install(f, project) for _ in range(2)]
    try:
        results = await asyncio.gather(first.get(one), second.get(two))
    finally:
        await first.aclose()
        await second.aclose()
    completed = [r for r in results if r.status_code == 302
                 and r.headers["location"].endswith("status=success&provider=acme")]
    assert len(completed) == 2, [(r.status_code, r.headers.get("location")) for r in results]
    [integration] = await f.integrations(project)
    assert integration.status == "active"
    installed_events = [e for e in await f.events(project) if e.type == "integration.installed"]
    assert len(installed_events) == len(completed)
    async with f.app.state.sessions() as s:
        credential = await s.get(Credential, integration.id)
    # The stored credential is one the provider issued to one of the two installs.
    assert opened(f, integration, credential).access_token in f.fakes.access_tokens
