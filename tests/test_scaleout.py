"""Scale-out (issue 7): three broker processes sharing one PostgreSQL database and one Redis
behave as one service.

- An install started on process A (the v1 API), opened on B (the connect link) and finished on
  C (the callback, as a load balancer would route it) succeeds, and A lists the integration.
- 300 concurrent reads of an expired token spread over the three ``broker serve`` processes make
  one refresh call to the provider; every reader gets the same new token.
- Three ``broker worker --interval 0.5`` processes: every integration due a health check is
  checked once per sweep, not once per process, and sweeps go on after the process holding the
  worker lock is killed with SIGKILL (once the lock it never released expires).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx2
import pytest
import redis
from sqlalchemy import update

from broker import store
from broker.crypto import Key, KeyRing
from broker.db import create_engine, sessionmaker
from broker.models import Integration
from tests.conftest import Database, new_project, service_missing
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import FakeState
from tests.test_connect import providers_toml
from tests.test_multiprocess import _seed

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# The worker lock is one key per Redis database ("broker:lock:worker"): the worker test uses
# a database of its own so a worker from another run on this server cannot hold it.
REDIS = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
WORKER_REDIS = f"redis://{REDIS_HOST}:{REDIS_PORT}/13"
APP = "https://app.example.test"
INTERVAL = 0.5  # worker sweep interval; the worker lock lives INTERVAL * 2 seconds
LOCK = "broker:lock:worker"


# -- processes -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _need_redis() -> None:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1):
            return
    except OSError:
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")


def _env(database: Database, providers: Path, redis_url: str, **extra: str
         ) -> tuple[dict[str, str], KeyRing]:
    material = secrets.token_bytes(32)
    ring = KeyRing([Key("kscale", material)], "kscale")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_DATABASE_URL=database.url, BROKER_REDIS_URL=redis_url,
               BROKER_PROVIDERS_FILE=str(providers),
               BROKER_KEYS=json.dumps({"primary": "kscale", "keys": [
                   {"id": "kscale", "secret": base64.b64encode(material).decode()}]}),
               **extra)
    return env, ring


@contextlib.contextmanager
def _running(commands: list[list[str]], env: dict[str, str], logs: Path
             ) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``python -m broker <command>`` per entry, output to ``logs/proc<i>.log``; every process
    is stopped on the way out (SIGCONT first, in case a test paused it; SIGKILL if SIGTERM is
    not enough)."""
    procs: list[subprocess.Popen[bytes]] = []
    files = []
    try:
        for i, args in enumerate(commands):
            out = open(logs / f"proc{i}.log", "wb")  # closed below
            files.append(out)
            procs.append(subprocess.Popen([sys.executable, "-m", "broker", *args], env=env,
                                          stdout=out, stderr=subprocess.STDOUT))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for out in files:
            out.close()


def _log(logs: Path, i: int) -> str:
    return (logs / f"proc{i}.log").read_text(errors="replace")


def _wait_ready(urls: list[str], procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + 30
    with httpx2.Client(timeout=1, trust_env=False) as client:
        for i, (url, proc) in enumerate(zip(urls, procs, strict=True)):
            while True:
                try:
                    if client.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"broker {i} did not start:\n{_log(logs, i)}")
                time.sleep(0.1)


@dataclass
class Cluster:
    urls: list[str]  # A, B, C; BROKER_PUBLIC_URL is A's
    ring: KeyRing
    database: Database
    fake_url: str
    fakes: FakeState


@pytest.fixture
def cluster(own_postgres: Database, tmp_path: Path, fakes: tuple[str, FakeState]
            ) -> Iterator[Cluster]:
    """Three ``broker serve`` processes on one database and one Redis, one public URL."""
    _need_redis()
    providers = tmp_path / "providers.toml"
    providers.write_text(providers_toml(fakes[0]))
    ports = [_free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    env, ring = _env(own_postgres, providers, REDIS, BROKER_PUBLIC_URL=urls[0],
                     BROKER_RETURN_URL_ALLOWLIST=APP, BROKER_LOG_LEVEL="WARNING")
    commands = [["serve", "--port", str(p)] for p in ports]
    with _running(commands, env, tmp_path) as procs:
        _wait_ready(urls, procs, tmp_path)
        yield Cluster(urls, ring, own_postgres, fakes[0], fakes[1])


async def _api_key(database: Database, project: str) -> str:
    engine = create_engine(database.url)
    try:
        async with sessionmaker(engine)() as s:
            return (await store.create_api_key(s, project, ("read", "integrations:write")))[1]
    finally:
        await engine.dispose()


def _on(url: str, base: str) -> str:
    """``url`` sent to another process: what a load balancer does with the public host."""
    parts, target = urlsplit(url), urlsplit(base)
    return urlunsplit(parts._replace(scheme=target.scheme, netloc=target.netloc))


# -- 1. one install across three processes ----------------------------------------------------

def test_an_install_started_on_one_process_completes_on_another(cluster: Cluster) -> None:
    a, b, c = cluster.urls
    cluster.fakes.auto_approve = True
    project = new_project()
    key = asyncio.run(_api_key(cluster.database, project))
    # One client per hop, none sharing a cookie jar: the binding cookie travels only because
    # the test (the browser) sends it on.
    with httpx2.Client(timeout=15, trust_env=False) as on_a, \
            httpx2.Client(timeout=15, trust_env=False) as on_b, \
            httpx2.Client(timeout=15, trust_env=False) as on_c, \
            httpx2.Client(timeout=15, trust_env=False) as provider:
        r = on_a.post(f"{a}/v1/projects/{project}/integrations/acme/install-url",
                      json={"return_url": f"{APP}/done"}, headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        install_url = r.json()["data"]["install_url"]
        assert install_url.startswith(f"{a}/connect/")

        start = on_b.get(_on(install_url, b))
        assert start.status_code == 302, start.text
        authorize = start.headers["location"]
        assert authorize.startswith(f"{cluster.fake_url}/oauth2/authorize?")
        assert parse_qs(urlsplit(authorize).query)["redirect_uri"] == [
            f"{a}/oauth/acme/callback"]  # the one public URL, whichever process answered
        cookie = start.headers["set-cookie"].split(";")[0]
        assert cookie.startswith("broker-bind=")

        back = provider.get(authorize)
        assert back.status_code == 302
        callback = back.headers["location"]
        assert callback.startswith(f"{a}/oauth/acme/callback?")

        done = on_c.get(_on(callback, c), headers={"Cookie": cookie})
        assert done.status_code == 302, done.text
        assert done.headers["location"] == f"{APP}/done?status=success&provider=acme"

        # The OAuth state was taken once, for all three: the same callback on A is refused.
        again = on_a.get(callback, headers={"Cookie": cookie})
        assert again.status_code == 400

        listed = on_a.get(f"{a}/v1/projects/{project}/integrations",
                          headers={"X-API-Key": key})
        assert listed.status_code == 200, listed.text
        [item] = listed.json()["data"]
        assert (item["provider"], item["status"], item["health_status"]) == (
            "acme", "active", "healthy")

    [exchange] = cluster.fakes.token_requests
    assert exchange["grant_type"] == "authorization_code"
    assert exchange["body"]["redirect_uri"] == f"{a}/oauth/acme/callback"


# -- 2. a refresh storm over three processes ----------------------------------------------------

def test_refresh_storm_across_three_processes_makes_one_provider_call(cluster: Cluster) -> None:
    state = cluster.fakes
    state.token_mode, state.slow_seconds = "slow", 0.5  # the storm arrives mid-refresh
    project, token = asyncio.run(_seed(cluster.database, cluster.ring, state))
    path = f"/internal/v1/projects/{project}/integrations/acme/credentials"

    async def storm() -> list[httpx2.Response]:
        limits = httpx2.Limits(max_connections=300)
        async with httpx2.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:
            return await asyncio.gather(*(
                client.get(cluster.urls[i % 3] + path,
                           headers={"Authorization": f"Bearer {token}"})
                for i in range(300)))

    results = asyncio.run(storm())
    assert {r.status_code for r in results} == {200}, {
        r.text for r in results if r.status_code != 200}
    tokens = {r.json()["data"]["access_token"] for r in results}
    assert len(tokens) == 1 and tokens != {"at-expired"}
    refreshes = [r for r in state.token_requests if r["grant_type"] == "refresh_token"]
    assert len(refreshes) == 1
    assert tokens <= set(state.access_tokens)


# -- 3. one worker runs the sweeps -------------------------------------------------------------

async def _postmark_integrations(database: Database, ring: KeyRing, tokens: list[str]
                                 ) -> list[str]:
    engine = create_engine(database.url)
    ids = []
    try:
        async with sessionmaker(engine)() as s:
            for server_token in tokens:
                project = new_project()
                await store.ensure_project(s, project)
                integration = await store.upsert_integration(
                    s, project_id=project, provider="postmark", setup_type="api_key")
                integration.last_synced_at = None  # due a health check
                await store.write_credential(s, ring, integration,
                                             store.Secrets(fields={"server_token": server_token}))
                ids.append(integration.id)
            await s.commit()
    finally:
        await engine.dispose()
    return ids


async def _make_due(database: Database, ids: list[str]) -> None:
    """Every integration due its health check again, in one statement (one sweep sees all or
    none of them)."""
    engine = create_engine(database.url)
    try:
        async with sessionmaker(engine)() as s:
            await s.execute(update(Integration).where(Integration.id.in_(ids))
                            .values(last_synced_at=None))
            await s.commit()
    finally:
        await engine.dispose()


def _sweeps(logs: Path) -> list[list[int]]:
    """Per process, the number of integrations each of its sweeps checked (sweeps that
    checked nothing are not logged)."""
    found: list[list[int]] = []
    for i in range(3):
        found.append([])
        for line in _log(logs, i).splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("msg") == "worker sweep" \
                        and record.get("checked"):
                    found[i].append(int(record["checked"]))
    return found


def _wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _pause_outside_a_sweep(procs: list[subprocess.Popen[bytes]], r: redis.Redis) -> None:
    """SIGSTOP ``procs`` at a moment none of them holds the worker lock. A process paused
    mid-sweep would, once resumed, finish that sweep after its lock had expired, which is a
    pause longer than the lease, not what this test is about."""
    deadline = time.monotonic() + 10
    while True:
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)
        time.sleep(0.05)  # a lock request already on its way to Redis lands meanwhile
        if r.get(LOCK) is None:
            return  # none of them is between acquire and release, and none can get there
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
        assert time.monotonic() < deadline, "never found the worker lock free"
        time.sleep(0.05 + secrets.randbelow(100) / 1000)


def test_one_worker_sweeps_at_a_time_and_another_takes_over_after_a_kill(
        own_postgres: Database, tmp_path: Path, fakes: tuple[str, FakeState]) -> None:
    _need_redis()
    fake_url, state = fakes
    providers = tmp_path / "providers.toml"
    providers.write_text(providers_toml(fake_url))
    env, ring = _env(own_postgres, providers, WORKER_REDIS, BROKER_LOG_LEVEL="INFO")
    tokens = [str(uuid.uuid4()) for _ in range(20)]
    state.postmark_tokens |= set(tokens)
    ids = asyncio.run(_postmark_integrations(own_postgres, ring, tokens))

    def checks() -> Counter[str]:
        return Counter(req["headers"].get("x-postmark-server-token") for req in
                       list(state.api_requests) if req["provider"] == "postmark")

    def checked_at_least(n: int) -> bool:
        seen = checks()
        return all(seen[t] >= n for t in tokens)

    with redis.Redis.from_url(WORKER_REDIS) as r:
        held = r.get(LOCK)
        assert held is None, "a worker from elsewhere holds this Redis database's worker lock"
        commands = [["worker", "--interval", str(INTERVAL)]] * 3
        with _running(commands, env, tmp_path) as procs:
            # Three rounds: all twenty due, checked, then three sweep intervals of quiet in
            # which every process tries for the lock at least twice.
            for n in (1, 2, 3):
                if n > 1:
                    asyncio.run(_make_due(own_postgres, ids))
                _wait_until(lambda n=n: checked_at_least(n), 30 if n == 1 else 10,
                            f"round {n} of health checks")
                time.sleep(INTERVAL * 3)
                assert {t: checks()[t] for t in tokens} == dict.fromkeys(tokens, n)
            assert all(p.poll() is None for p in procs), [_log(tmp_path, i) for i in range(3)]
            # One sweep per round, each covering all twenty.
            swept = _sweeps(tmp_path)
            assert sorted(sum(swept, [])) == [20, 20, 20], swept

            # Pause B and C so A is the one that takes the lock for the next sweep, then kill
            # A with SIGKILL in the middle of that sweep: its lock is never released.
            _pause_outside_a_sweep(procs[1:], r)
            before = sum(checks().values())
            asyncio.run(_make_due(own_postgres, ids))
            _wait_until(lambda: sum(checks().values()) > before, 10, "A to start a sweep")
            procs[0].kill()
            killed_at = time.monotonic()
            procs[0].wait(timeout=10)
            orphan = r.get(LOCK)
            assert orphan is not None, "A was not holding the worker lock when killed"
            assert 0 < r.pttl(LOCK) <= INTERVAL * 2000
            time.sleep(0.2)  # a request A sent just before it died may still land
            by_a = checks()
            assert sum(by_a.values()) - before < len(tokens), "A finished its sweep; too late"

            procs[1].send_signal(signal.SIGCONT)
            procs[2].send_signal(signal.SIGCONT)
            # Nobody sweeps while the dead process's lock lives...
            while r.get(LOCK) == orphan:
                assert checks() == by_a, (
                    "a sweep ran while the killed worker held the lock", checks() - by_a)
                assert time.monotonic() - killed_at < INTERVAL * 2 + 1
                time.sleep(0.005)
            # ... then B or C picks it up and checks the rest.
            _wait_until(lambda: checked_at_least(4), 10, "a sweep after the kill")
            took_over = time.monotonic() - killed_at
            time.sleep(INTERVAL * 3)
            final = checks()
            # At most the one check A had in flight when it died is repeated.
            assert all(final[t] in (4, 5) for t in tokens), final
            assert sum(final[t] - 4 for t in tokens) <= 1, final
            now = _sweeps(tmp_path)
            assert now[0] == swept[0]  # A died before logging its last sweep
            assert len(now[1]) + len(now[2]) > len(swept[1]) + len(swept[2])
            assert took_over <= INTERVAL * 2 + INTERVAL + 2
            assert procs[1].poll() is None and procs[2].poll() is None
