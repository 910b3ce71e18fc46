"""Fault injection with real services (issue 8; checklist section F, FT-01 and FT-06).

Every fault is made on a service of the test's own, never on the machine's Redis or
PostgreSQL: a throwaway ``redis-server`` (stopped, ``CLIENT PAUSE``d, its connections killed
with ``CLIENT KILL``), a throwaway PostgreSQL cluster (stopped, its backends terminated, a
trigger that fails the commit), and a TCP proxy (tests/fakes/proxy.py) in front of either or
of the fake providers that black-holes, resets, answers garbage or answers late.

What every case expects: a clear 503 with ``Retry-After`` while a dependency is down, and an
answer within the configured timeout rather than a hang; recovery without a restart when it
returns; nothing half-written, no state created or spent by a failed request, no credential
lost, no duplicate integration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest
import redis as redis_client
from sqlalchemy import select

from broker import db, migrate, store, worker
from broker.crypto import KeyRing
from broker.models import AuditEvent, Credential, Integration
from broker.settings import Settings
from broker.state import RedisState, StateStore
from tests.conftest import Database, new_project, service_missing
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import POSTMARK_TOKEN, FakeState
from tests.fakes.proxy import FaultProxy, proxy
from tests.test_connect import APP, PUBLIC, Flow, make_flow, providers_toml, query
from tests.test_credentials import Api, installed, refreshes, service_token

pytestmark = pytest.mark.anyio

# The state-store budget the broker under test runs with: every Redis call gives up after it.
STATE_TIMEOUT = 0.5
# Provider calls give up after this (Settings.provider_timeout).
PROVIDER_TIMEOUT = 0.5
# A liveness bound, not a timing assertion: far above what a bounded request takes, and far
# below the time an unbounded one would hang.
HANG_GUARD = 10.0
# A CLIENT PAUSE lasts this long: a paused request makes at most three bounded calls.
PAUSE_MS = int(STATE_TIMEOUT * 6 * 1000)
PG_BIN = Path("/usr/lib/postgresql/15/bin")


# -- throwaway services ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


class ThrowawayRedis:
    def __init__(self, directory: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("redis-server (Debian package redis-server)")
        self.port = _free_port()
        self.binary, self.dir = str(binary), directory
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: redis_client.Redis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, "throwaway redis-server")

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def admin(self) -> redis_client.Redis:
        """A plain client for the test's own commands."""
        if self._admin is None:
            self._admin = redis_client.Redis(port=self.port, socket_timeout=HANG_GUARD)
        return self._admin


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ThrowawayPostgres:
    """A PostgreSQL cluster of the test's own: ``initdb`` into a temporary directory and one
    ``postgres`` process on a free port, run as the ``postgres`` user when the tests run as
    root (initdb refuses root). Stopped by its pid."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            service_missing(f"PostgreSQL 15 server binaries in {PG_BIN}")
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="broker-ft-pg-"))
        self.user: dict[str, str] = {}
        if os.geteuid() == 0:
            self.user = {"user": "postgres", "group": "postgres"}
            shutil.chown(self.dir, "postgres", "postgres")
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run([str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust",
                        "-U", "postgres", "-E", "UTF8", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       **self.user)  # type: ignore[call-overload]

    def url(self, database: str = "postgres", port: int | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{port or self.port}/{database}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
             "-c", "fsync=off", "-c", "full_page_writes=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            **self.user)  # type: ignore[call-overload]
        deadline = time.monotonic() + 20
        while subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                              str(self.port)]).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("throwaway postgres did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: drops every connection
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    async def sql(self, statements: str, database: str = "postgres") -> None:
        conn = await asyncpg.connect(self.url(database), timeout=5)
        try:
            await conn.execute(statements)
        finally:
            await conn.close()

    async def fetch(self, query: str, database: str = "postgres") -> list[Any]:
        conn = await asyncpg.connect(self.url(database), timeout=5)
        try:
            return list(await conn.fetch(query))
        finally:
            await conn.close()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[ThrowawayPostgres]:
    cluster = ThrowawayPostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg(pg_cluster: ThrowawayPostgres) -> Iterator[tuple[ThrowawayPostgres, str]]:
    """A migrated database of this test's own in the throwaway cluster; the cluster is
    running again at the end, whatever the test did to it."""
    name = f"ft_{secrets.token_hex(4)}"
    asyncio.run(pg_cluster.sql(f'CREATE DATABASE "{name}"'))
    migrate.upgrade(pg_cluster.url(name))
    yield pg_cluster, name
    if pg_cluster.proc is None:
        pg_cluster.start()


# -- brokers under test ------------------------------------------------------------------------

def _settings(database_url: str, provider_base: str, tmp_path: Path, **changes: Any
              ) -> Settings:
    path = tmp_path / "providers.toml"
    path.write_text(providers_toml(provider_base))
    return Settings(database_url=database_url, public_url=PUBLIC, providers_file=path,
                    return_url_allowlist=(APP,), provider_timeout=PROVIDER_TIMEOUT, **changes)


@contextlib.asynccontextmanager
async def _flow(settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState],
                state_store: StateStore | None = None) -> AsyncIterator[Flow]:
    async for value in make_flow(settings, ring, fakes, state_store=state_store):
        yield value


@pytest.fixture
async def f(postgres: Database, tmp_path: Path, ring: KeyRing,
            fakes: tuple[str, FakeState], redis: ThrowawayRedis) -> AsyncIterator[Flow]:
    """The broker on PostgreSQL and the throwaway Redis (the Redis faults do not depend on
    the database backend: one is enough, and keeps the module quick)."""
    settings = _settings(postgres.url, fakes[0], tmp_path, redis_url=redis.url)
    async with _flow(settings, ring, fakes, RedisState(redis.url, STATE_TIMEOUT)) as flow:
        yield flow


async def _bounded(call: Any) -> httpx2.Response:
    async with asyncio.timeout(HANG_GUARD):
        return await call


def _unavailable(r: httpx2.Response) -> bool:
    return r.status_code == 503 and r.headers.get("retry-after", "").isdigit()


async def _to_callback(f: Flow, project: str) -> str:
    """Install start and consent: the callback URL the provider sends the browser to."""
    start = await f.get(await f.install_url(project, "acme"))
    assert start.status_code == 302, start.text
    back = await f.get(start.headers["location"])
    return str(back.headers["location"])


async def _installed_ok(f: Flow, callback: str) -> None:
    done = await f.get(callback)
    assert done.status_code == 302, done.text
    assert done.headers["location"] == f"{APP}/done?status=success&provider=acme"


def _oauth_records(server: ThrowawayRedis) -> list[bytes]:
    return list(server.admin().scan_iter("broker:oauth:*"))


@contextlib.contextmanager
def _paused(server: ThrowawayRedis) -> Iterator[None]:
    """``CLIENT PAUSE`` for the block. The pause lifts on its own after ``PAUSE_MS`` (this
    Redis also holds a CLIENT UNPAUSE while paused), longer than any bounded request in the
    block takes: a request that waited the pause out would succeed, and fail the test."""
    admin = server.admin()
    admin.execute_command("CLIENT", "PAUSE", PAUSE_MS)
    try:
        yield
    finally:
        # The broker closed the connections it gave up on, and the server drops a closed
        # client's queued command: nothing it sent runs now. Our PING returns once the
        # pause is over.
        admin.ping()


async def _until_ready(f: Flow) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while (await f.browser.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "did not recover"


# -- FT-01: Redis unavailable, fail closed -----------------------------------------------------

async def test_ft_01_redis_stopped_connect_and_callback_answer_503_then_recover(
        f: Flow, redis: ThrowawayRedis) -> None:
    """Redis stopped: the connect link answers 503 with Retry-After and is not used up; no
    provider is called; readiness says why. Redis back (empty, same port): the broker
    reconnects on its own and the same link completes the install."""
    f.fakes.auto_approve = True
    assert (await f.browser.get("/readyz")).status_code == 200
    project = new_project()
    link = await f.install_url(project, "acme")  # a database row only: Redis not needed

    redis.stop()
    down = await _bounded(f.get(link))
    assert _unavailable(down), (down.status_code, down.headers)
    ready = await f.browser.get("/readyz")
    assert _unavailable(ready) and ready.json()["checks"]["state"] == "unreachable"
    assert f.fakes.authorize_requests == []

    redis.start()
    await _until_ready(f)
    start = await f.get(link)  # the 503 did not spend the single-use link
    assert start.status_code == 302, start.text
    await _installed_ok(f, (await f.get(start.headers["location"])).headers["location"])
    assert [i.status for i in await f.integrations(project)] == ["active"]


async def test_ft_01_redis_stopped_before_the_callback_spends_no_code(
        f: Flow, redis: ThrowawayRedis) -> None:
    """The state lived in the Redis that died: the callback answers 503 while it is down
    and 400 once an empty Redis is back; the code is never sent to the provider and nothing
    is stored."""
    f.fakes.auto_approve = True
    project = new_project()
    callback = await _to_callback(f, project)
    redis.stop()
    assert _unavailable(await _bounded(f.get(callback)))
    redis.start()
    await _until_ready(f)
    assert (await f.get(callback)).status_code == 400
    assert f.fakes.token_requests == []
    assert await f.integrations(project) == []


async def test_ft_01_redis_paused_at_install_start_creates_no_state(
        f: Flow, redis: ThrowawayRedis) -> None:
    """CLIENT PAUSE while the connect link is opened (the state put): 503 with Retry-After
    within the timeout, no state record, no provider call; after the pause the same link
    works."""
    f.fakes.auto_approve = True
    project = new_project()
    link = await f.install_url(project, "acme")
    with _paused(redis):
        assert _unavailable(await _bounded(f.get(link)))
    assert _oauth_records(redis) == []
    assert f.fakes.authorize_requests == []
    start = await f.get(link)
    assert start.status_code == 302 and len(_oauth_records(redis)) == 1


async def test_ft_01_redis_paused_at_the_callback_keeps_the_state(
        f: Flow, redis: ThrowawayRedis) -> None:
    """CLIENT PAUSE at the callback (the state take): 503 with Retry-After within the
    timeout, no token request, and the state is not spent: after the pause the very same
    callback completes the install, once."""
    f.fakes.auto_approve = True
    project = new_project()
    callback = await _to_callback(f, project)
    with _paused(redis):
        assert _unavailable(await _bounded(f.get(callback)))
    assert f.fakes.token_requests == []
    assert len(_oauth_records(redis)) == 1
    await _installed_ok(f, callback)
    assert (await f.get(callback)).status_code == 400  # and only once
    assert len(f.fakes.token_requests) == 1
    assert [i.status for i in await f.integrations(project)] == ["active"]


async def test_ft_01_redis_connections_killed_are_replaced_without_a_failure(
        f: Flow, redis: ThrowawayRedis) -> None:
    """CLIENT KILL of every broker connection before the start and before the callback:
    Redis itself is up, so the broker reconnects within the same request and the install
    completes, with one state record made and spent."""
    f.fakes.auto_approve = True
    project = new_project()
    admin = redis.admin()
    link = await f.install_url(project, "acme")
    assert (await f.browser.get("/readyz")).status_code == 200  # a pooled connection exists
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    start = await f.get(link)
    assert start.status_code == 302, start.text
    callback = (await f.get(start.headers["location"])).headers["location"]
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    await _installed_ok(f, callback)
    assert _oauth_records(redis) == [] and len(f.fakes.token_requests) == 1


@pytest.fixture
async def redis_behind_proxy(postgres: Database, tmp_path: Path, ring: KeyRing,
                             fakes: tuple[str, FakeState], redis: ThrowawayRedis
                             ) -> AsyncIterator[tuple[Flow, FaultProxy]]:
    with proxy("127.0.0.1", redis.port) as cut:
        url = f"redis://{cut.address}/0"
        settings = _settings(postgres.url, fakes[0], tmp_path, redis_url=url)
        async with _flow(settings, ring, fakes, RedisState(url, STATE_TIMEOUT)) as flow:
            yield flow, cut


@pytest.mark.parametrize("mode", ["blackhole", "reset"])
async def test_ft_01_redis_cut_off_by_a_proxy_answers_503_then_recovers(
        redis_behind_proxy: tuple[Flow, FaultProxy], redis: ThrowawayRedis,
        mode: str) -> None:
    """The network to Redis black-holed (every connection hangs) or resetting: install
    start and callback answer 503 with Retry-After within the timeout, nothing is created or
    spent; with the network back, the same callback completes."""
    f, cut = redis_behind_proxy
    f.fakes.auto_approve = True
    project = new_project()
    link = await f.install_url(project, "acme")
    callback = await _to_callback(f, project)

    cut.mode = mode
    cut.cut()
    assert _unavailable(await _bounded(f.get(link)))
    assert _unavailable(await _bounded(f.get(callback)))
    assert len(f.fakes.authorize_requests) == 1 and f.fakes.token_requests == []
    assert len(_oauth_records(redis)) == 1  # only the first start's, not yet spent

    cut.mode = "pass"
    await _installed_ok(f, callback)
    assert [i.status for i in await f.integrations(project)] == ["active"]


async def test_ft_01_refresh_with_redis_paused_answers_503_without_a_provider_call(
        f: Flow, redis: ThrowawayRedis) -> None:
    """An expired token read while Redis is paused: the refresh lock cannot be taken, so the
    read answers 503 with Retry-After and the provider sees no refresh (never an unlocked
    one); the stored grant is untouched. After the pause one refresh serves the read."""
    api = Api(f, await service_token(f), (await installed(
        f, expires_in=timedelta(minutes=-1)))[0])
    _, before = await api.row()
    with _paused(redis):
        assert _unavailable(await _bounded(api.read()))
    assert refreshes(f) == []
    integration, after = await api.row()
    assert after is not None and before is not None
    assert (integration.status, after.version, after.refresh_token_ct) == (
        "active", before.version, before.refresh_token_ct)
    r = await api.read()
    assert r.status_code == 200, r.text
    assert len(refreshes(f)) == 1


async def test_ft_01_refresh_after_redis_connections_killed_refreshes_once(
        f: Flow, redis: ThrowawayRedis) -> None:
    """CLIENT KILL of the broker's connections just before an expired token is read: the
    refresh lock is taken on a new connection and the provider sees exactly one refresh."""
    api = Api(f, await service_token(f), (await installed(
        f, expires_in=timedelta(minutes=-1)))[0])
    assert (await f.browser.get("/readyz")).status_code == 200  # a pooled connection exists
    assert redis.admin().client_kill_filter(_type="normal", skipme=True) >= 1
    r = await api.read()
    assert r.status_code == 200, r.text
    assert r.json()["data"]["access_token"] in f.fakes.access_tokens
    assert len(refreshes(f)) == 1
    assert list(redis.admin().scan_iter("broker:lock:*")) == []  # and released


# -- faults at the provider: hangs, resets, garbage, answers past the timeout -------------------

PROVIDER_FAULTS = ["blackhole", "reset", "garbage", "delay"]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'faults.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
async def pf(sqlite_url: str, tmp_path: Path, ring: KeyRing, fakes: tuple[str, FakeState]
             ) -> AsyncIterator[tuple[Flow, FaultProxy]]:
    """The broker (SQLite, in-memory state: the provider is the fault here) with every
    provider call going through a fault proxy in front of the fakes."""
    upstream = httpx2.URL(fakes[0])
    with proxy(upstream.host, int(upstream.port or 80)) as cut:
        cut.delay = PROVIDER_TIMEOUT * 3
        settings = _settings(sqlite_url, f"http://{cut.address}", tmp_path)
        async with _flow(settings, ring, (f"http://{cut.address}", fakes[1])) as flow:
            yield flow, cut


@pytest.mark.parametrize("mode", PROVIDER_FAULTS)
async def test_provider_fault_at_the_code_exchange_stores_nothing(
        pf: tuple[Flow, FaultProxy], mode: str) -> None:
    f, cut = pf
    f.fakes.auto_approve = True
    project = new_project()
    callback = await _to_callback(f, project)
    cut.mode = mode
    r = await _bounded(f.get(callback))
    assert r.status_code == 302
    outcome = query(r.headers["location"])
    assert outcome["status"] == ["error"]
    assert outcome["error"][0] in ("timeout", "unreachable", "bad_response")
    assert await f.integrations(project) == []
    assert [e.type for e in await f.events(project)] == ["integration.install_failed"]
    cut.mode = "pass"
    assert (await f.get(callback)).status_code == 400  # the code is never tried again


@pytest.mark.parametrize("mode", PROVIDER_FAULTS)
async def test_provider_fault_at_a_refresh_keeps_the_grant(
        pf: tuple[Flow, FaultProxy], mode: str) -> None:
    """An expired token whose refresh meets a provider fault: a transient error (504 or
    503), the integration stays active with its tokens unchanged, a retry time is set; once
    the provider is back (and the retry time passed) the refresh succeeds."""
    f, cut = pf
    api = await _api(f, expires_in=timedelta(minutes=-1))
    _, before = await api.row()
    cut.mode = mode
    r = await _bounded(api.read())
    # 504 when the provider did not answer in time, 503 (with Retry-After) otherwise.
    assert (r.status_code, r.json()["error"]["code"]) in (
        (504, "provider_timeout"), (503, "refresh_failed")), r.text
    assert r.status_code == 504 or _unavailable(r)
    integration, after = await api.row()
    assert before is not None and after is not None
    assert integration.status == "active" and integration.health_status != "reauth_required"
    assert (after.version, after.refresh_token_ct, after.access_token_ct) == (
        before.version, before.refresh_token_ct, before.access_token_ct)
    assert after.refresh_failures == 1 and after.retry_at is not None

    cut.mode = "pass"
    async with f.app.state.sessions() as s:
        await s.execute(Credential.__table__.update().where(
            Credential.integration_id == integration.id).values(retry_at=None))
        await s.commit()
    f.fakes.token_requests.clear()
    f.fakes.refresh_tokens["rt-seed"] = "read write"  # a late "delay" refresh spent it
    r = await api.read()
    assert r.status_code == 200, r.text
    assert r.json()["data"]["access_token"] in f.fakes.access_tokens


async def _api(f: Flow, **kwargs: Any) -> Api:
    project, _ = await installed(f, **kwargs)
    return Api(f, await service_token(f), project)


@pytest.mark.parametrize("mode", PROVIDER_FAULTS)
async def test_provider_fault_at_key_verification_keeps_the_form(
        pf: tuple[Flow, FaultProxy], mode: str) -> None:
    """Postmark's key check meets a provider fault: the form comes back with 503 and
    Retry-After, nothing is stored, and the same form submits once the provider is back."""
    f, cut = pf
    project = new_project()
    form = await f.get(await f.install_url(project, "postmark"))
    assert form.status_code == 200
    action = form.text.split("action='", 1)[1].split("'", 1)[0]
    cut.mode = mode
    r = await _bounded(f.browser.post(action, data={"server_token": POSTMARK_TOKEN}))
    assert _unavailable(r)
    assert await f.integrations(project) == []
    cut.mode = "pass"
    r = await f.browser.post(action, data={"server_token": POSTMARK_TOKEN})
    assert r.status_code == 302 and "status=success" in r.headers["location"]
    assert [i.status for i in await f.integrations(project)] == ["active"]


@pytest.mark.parametrize("mode", PROVIDER_FAULTS)
async def test_provider_fault_at_revocation_still_disconnects(
        pf: tuple[Flow, FaultProxy], mode: str) -> None:
    """Disconnect with revoke=true while the revocation endpoint fails: the answer comes
    within the timeout, says the revocation failed, and the local wipe happens anyway."""
    f, cut = pf
    api = await _api(f)
    cut.mode = mode
    r = await _bounded(api.delete("?revoke=true"))
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["status"] == "disconnected"
    assert data["revoked"] == [] and data["revocation_error"] == "provider_refused"
    integration, credential = await api.row()
    assert integration.status == "disconnected" and credential is None
    async with f.app.state.sessions() as s:
        [event] = (await s.scalars(select(AuditEvent).where(
            AuditEvent.integration_id == integration.id,
            AuditEvent.type == "integration.disconnected"))).all()
    assert event.details["revocation_error"] == "provider_refused"


@pytest.mark.parametrize("mode", PROVIDER_FAULTS)
async def test_provider_fault_at_the_health_check_degrades_and_keeps_the_credential(
        pf: tuple[Flow, FaultProxy], mode: str) -> None:
    f, cut = pf
    project = new_project()
    async with f.app.state.sessions() as s:
        await store.ensure_project(s, project)
        integration = await store.upsert_integration(s, project_id=project,
                                                     provider="postmark", setup_type="api_key")
        await store.write_credential(s, f.app.state.ring, integration,
                                     store.Secrets(fields={"server_token": POSTMARK_TOKEN}))
        await s.commit()
    async with f.app.state.sessions() as s:
        integration = await s.get(Integration, integration.id)
        credential = await s.get(Credential, integration.id)
    cut.mode = mode
    async with asyncio.timeout(HANG_GUARD):
        assert await worker.check_one(f.app.state, integration, credential) == "degraded"
    [row] = await f.integrations(project)
    assert (row.status, row.health_status) == ("active", "degraded")
    assert row.error_message and POSTMARK_TOKEN not in row.error_message
    async with f.app.state.sessions() as s:
        kept = await s.get(Credential, integration.id)
    assert kept is not None and kept.version == credential.version
    cut.mode = "pass"
    row.updated_at = integration.updated_at
    assert await worker.check_one(f.app.state, row, kept) == "healthy"


# -- PostgreSQL: stopped, backends terminated, commits failing, black-holed ----------------------

@contextlib.asynccontextmanager
async def _pg_flow(database_url: str, tmp_path: Path, ring: KeyRing,
                   fakes: tuple[str, FakeState]) -> AsyncIterator[Flow]:
    settings = _settings(database_url, fakes[0], tmp_path)
    async with _flow(settings, ring, fakes) as flow:
        yield flow


async def _list(f: Flow, project: str, key: str) -> httpx2.Response:
    return await _bounded(f.browser.get(f"/v1/projects/{project}/integrations",
                                        headers={"X-API-Key": key}))


async def test_postgres_stopped_answers_503_and_recovers_without_a_restart(
        pg: tuple[ThrowawayPostgres, str], tmp_path: Path, ring: KeyRing,
        fakes: tuple[str, FakeState]) -> None:
    cluster, name = pg
    async with _pg_flow(cluster.url(name), tmp_path, ring, fakes) as f:
        project = new_project()
        key = await f.key(project)
        assert (await _list(f, project, key)).status_code == 200
        cluster.stop()
        r = await _list(f, project, key)
        assert _unavailable(r) and r.json()["error"]["code"] == "unavailable"
        ready = await f.browser.get("/readyz")
        assert _unavailable(ready) and ready.json()["checks"]["database"] == "unreachable"
        cluster.start()
        assert (await _list(f, project, key)).status_code == 200
        assert (await f.browser.get("/readyz")).status_code == 200


async def test_postgres_backends_terminated_are_replaced_before_the_next_request(
        pg: tuple[ThrowawayPostgres, str], tmp_path: Path, ring: KeyRing,
        fakes: tuple[str, FakeState]) -> None:
    """pg_terminate_backend on every pooled connection: the pool notices at checkout and
    reconnects, so the next requests succeed rather than fail once each."""
    cluster, name = pg
    async with _pg_flow(cluster.url(name), tmp_path, ring, fakes) as f:
        project = new_project()
        key = await f.key(project)
        assert (await _list(f, project, key)).status_code == 200
        killed = await cluster.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
        assert killed, "the broker held no pooled connection"
        for _ in range(3):
            assert (await _list(f, project, key)).status_code == 200


TERMINATE_ON_INSERT = """
CREATE FUNCTION ft_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$;
CREATE TRIGGER ft_fault BEFORE INSERT ON credentials FOR EACH ROW EXECUTE FUNCTION ft_fault();
"""
# A deferred trigger runs at COMMIT: the commit itself fails, as with a full disk.
FAIL_AT_COMMIT = """
CREATE FUNCTION ft_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'no space left' USING ERRCODE = 'disk_full'; END $$;
CREATE CONSTRAINT TRIGGER ft_fault AFTER INSERT ON audit_events DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION ft_fault();
"""


@pytest.mark.parametrize("fault", ["connection_terminated", "commit_fails"])
async def test_postgres_failing_during_the_install_commit_writes_nothing(
        pg: tuple[ThrowawayPostgres, str], tmp_path: Path, ring: KeyRing,
        fakes: tuple[str, FakeState], fault: str) -> None:
    """The install's transaction dies (its backend terminated mid-insert, or the commit
    refused): the callback answers 503 with Retry-After, and no integration, credential or
    "installed" audit row exists. The state and code were spent (never replayable); once the
    database is healthy a fresh install succeeds, and there is one integration."""
    cluster, name = pg
    ddl = TERMINATE_ON_INSERT if fault == "connection_terminated" else FAIL_AT_COMMIT
    async with _pg_flow(cluster.url(name), tmp_path, ring, fakes) as f:
        f.fakes.auto_approve = True
        project = new_project()
        callback = await _to_callback(f, project)
        await cluster.sql(ddl, name)
        r = await _bounded(f.get(callback))
        assert _unavailable(r), (r.status_code, r.text)
        async with f.app.state.sessions() as s:
            assert (await s.scalars(select(Integration).where(
                Integration.project_id == project))).all() == []
            assert (await s.scalars(select(Credential))).all() == []
        assert await f.events(project) == []
        await cluster.sql("DROP FUNCTION ft_fault() CASCADE", name)
        assert (await f.get(callback)).status_code == 400
        assert len(f.fakes.token_requests) == 1
        await _installed_ok(f, await _to_callback(f, project))
        assert [i.status for i in await f.integrations(project)] == ["active"]


async def test_postgres_black_holed_answers_503_within_the_timeout(
        pg: tuple[ThrowawayPostgres, str], tmp_path: Path, ring: KeyRing,
        fakes: tuple[str, FakeState], monkeypatch: pytest.MonkeyPatch) -> None:
    """The network to PostgreSQL stops answering (pooled connections and new ones): the
    request answers 503 once the statement and connect timeouts run out, instead of hanging
    until TCP gives up; with the network back the next request succeeds."""
    cluster, name = pg
    monkeypatch.setattr(db, "CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(db, "STATEMENT_TIMEOUT", 0.5)
    with proxy("127.0.0.1", cluster.port) as cut:
        async with _pg_flow(cluster.url(name, cut.port), tmp_path, ring, fakes) as f:
            project = new_project()
            key = await f.key(project)
            assert (await _list(f, project, key)).status_code == 200
            cut.mode = "blackhole"
            assert _unavailable(await _list(f, project, key))
            cut.mode = "pass"
            cut.cut()
            assert (await _list(f, project, key)).status_code == 200


# -- FT-06: the broker killed in the middle of a callback ---------------------------------------

# Tells a listener the moment the install's transaction commits (NOTIFY is delivered at
# COMMIT, never before).
NOTIFY_ON_COMMIT = """
CREATE FUNCTION ft_committed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('ft_committed', NEW.integration_id); RETURN NEW; END $$;
CREATE TRIGGER ft_committed AFTER INSERT ON credentials FOR EACH ROW
EXECUTE FUNCTION ft_committed();
"""


class _KillOnCommit:
    """LISTENs on its own thread and event loop; SIGKILLs ``pid`` on the first notice."""

    def __init__(self, dsn: str, pid: int):
        self.dsn, self.pid = dsn, pid
        self.listening, self.killed = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()))

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=5)

        def kill(*_: object) -> None:
            if not self.killed.is_set():
                os.kill(self.pid, signal.SIGKILL)
                self.killed.set()

        try:
            await conn.add_listener("ft_committed", kill)
            self.listening.set()
            await asyncio.get_running_loop().run_in_executor(None, self.killed.wait, HANG_GUARD)
        finally:
            await conn.close()

    def __enter__(self) -> _KillOnCommit:
        self._thread.start()
        assert self.listening.wait(HANG_GUARD)
        return self

    def __exit__(self, *_: object) -> None:
        self.killed.set()  # lets the listener end if nothing committed
        self._thread.join(timeout=HANG_GUARD)


@pytest.mark.parametrize("kill_point", ["during_exchange", "after_commit"])
def test_ft_06_broker_killed_mid_callback_leaves_no_half_install_and_no_replay(
        own_postgres: Database, redis: ThrowawayRedis, tmp_path: Path,
        fakes: tuple[str, FakeState], kill_point: str) -> None:
    """``broker serve`` is SIGKILLed in the callback: while its token request hangs at the
    provider (state taken, nothing committed), or the moment the install commits (before or
    just after its response; the outcome must be the same either way). Restarted: no
    half-created integration (none, or one active with its credential), the same code and
    state cannot be replayed (the provider sees no second exchange), and a fresh install
    succeeds without a duplicate."""
    from tests.test_scaleout import _api_key, _env, _running, _wait_ready

    base, state = fakes
    state.auto_approve = True
    if kill_point == "during_exchange":
        state.token_mode, state.hang_seconds = "hang", 60
    else:
        asyncio.run(_pg_execute(own_postgres.url, NOTIFY_ON_COMMIT))
    providers = tmp_path / "providers.toml"
    providers.write_text(providers_toml(base))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env, _ = _env(own_postgres, providers, redis.url, BROKER_PUBLIC_URL=url,
                  BROKER_RETURN_URL_ALLOWLIST=APP, BROKER_LOG_LEVEL="WARNING")
    project = new_project()
    key = asyncio.run(_api_key(own_postgres, project))
    with httpx2.Client(timeout=15, trust_env=False) as browser:
        def to_callback() -> str:
            r = browser.post(f"{url}/v1/projects/{project}/integrations/acme/install-url",
                             json={"return_url": f"{APP}/done"}, headers={"X-API-Key": key})
            assert r.status_code == 200, r.text
            start = browser.get(r.json()["data"]["install_url"])
            assert start.status_code == 302, start.text
            return str(browser.get(start.headers["location"]).headers["location"])

        with _running([["serve", "--port", str(port)]], env, tmp_path) as [proc]:
            _wait_ready([url], [proc], tmp_path)
            callback = to_callback()
            if kill_point == "during_exchange":
                in_flight = threading.Thread(target=_attempt, args=(browser, callback))
                in_flight.start()
                deadline = time.monotonic() + HANG_GUARD
                while not state.token_requests:
                    assert time.monotonic() < deadline, "the exchange never reached the provider"
                    time.sleep(0.01)
                proc.send_signal(signal.SIGKILL)
                in_flight.join(timeout=HANG_GUARD)
            else:
                with _KillOnCommit(own_postgres.url, proc.pid) as killer:
                    _attempt(browser, callback)
                    assert killer.killed.wait(HANG_GUARD), "the install never committed"
            proc.wait(timeout=10)

        rows = asyncio.run(_rows(own_postgres, project))
        # Nothing, or a whole install: never a row without its credential.
        assert rows == ([] if kill_point == "during_exchange" else [("active", True)]), rows
        state.token_mode = "ok"
        with _running([["serve", "--port", str(port)]], env, tmp_path) as [proc]:
            _wait_ready([url], [proc], tmp_path)
            assert browser.get(callback).status_code == 400
            assert len(state.token_requests) == 1  # the code was never sent again
            done = browser.get(to_callback())
            assert done.status_code == 302
            assert done.headers["location"] == f"{APP}/done?status=success&provider=acme"
    assert asyncio.run(_rows(own_postgres, project)) == [("active", True)]


async def _pg_execute(url: str, statements: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(statements)
    finally:
        await conn.close()


def _attempt(browser: httpx2.Client, url: str) -> object:
    try:
        return browser.get(url)
    except httpx2.HTTPError as exc:
        return exc


async def _rows(database: Database, project: str) -> list[tuple[str, bool]]:
    """The project's integrations as (status, has a credential)."""
    engine = db.create_engine(database.url)
    try:
        async with db.sessionmaker(engine)() as s:
            found = (await s.execute(
                select(Integration.status, Credential.integration_id)
                .outerjoin(Credential, Credential.integration_id == Integration.id)
                .where(Integration.project_id == project))).all()
            return [(status, credential is not None) for status, credential in found]
    finally:
        await engine.dispose()
