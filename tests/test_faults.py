"""Faults with real services: a throwaway Redis of our own (never the machine's) is stopped
and started again under a running broker. DESIGN 1.6: with Redis down, /readyz says not
ready and the browser endpoints answer 503; everything recovers without a restart when
Redis returns."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from broker.crypto import KeyRing
from broker.settings import Settings
from broker.state import RedisState
from tests.conftest import new_project, service_missing
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import FakeState
from tests.test_connect import Flow, flow_settings, make_flow  # noqa: F401

pytestmark = pytest.mark.anyio


class ThrowawayRedis:
    def __init__(self, directory: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("redis-server (Debian package redis-server)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.binary, self.dir = str(binary), directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("throwaway redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def f(flow_settings: Settings, ring: KeyRing,  # noqa: F811
            fakes: tuple[str, FakeState], redis: ThrowawayRedis) -> AsyncIterator[Flow]:
    settings = replace(flow_settings, redis_url=redis.url)
    async for value in make_flow(settings, ring, fakes, state_store=RedisState(redis.url)):
        yield value


async def test_redis_down_then_back_without_a_restart(f: Flow, redis: ThrowawayRedis) -> None:
    f.fakes.auto_approve = True
    assert (await f.browser.get("/readyz")).status_code == 200

    redis.stop()
    project = new_project()
    down = await f.get(await f.install_url(project, "acme"))
    assert down.status_code == 503
    ready = await f.browser.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["state"] == "unreachable"
    assert f.fakes.authorize_requests == []

    redis.start()  # same port, empty: the broker reconnects on its own
    deadline = time.monotonic() + 10
    while (await f.browser.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "did not recover"
    start = await f.get(await f.install_url(project, "acme"))
    assert start.status_code == 302
    callback = (await f.get(start.headers["location"])).headers["location"]
    done = await f.get(callback)
    assert done.headers["location"].endswith("status=success&provider=acme")


async def test_redis_dying_between_start_and_callback_loses_nothing_twice(
        f: Flow, redis: ThrowawayRedis) -> None:
    """The state lived in the Redis that died: the callback is refused (503 while it is
    down, 400 once an empty Redis is back), no token request is made, nothing is stored."""
    f.fakes.auto_approve = True
    project = new_project()
    start = await f.get(await f.install_url(project, "acme"))
    callback = (await f.get(start.headers["location"])).headers["location"]
    redis.stop()
    assert (await f.get(callback)).status_code == 503
    redis.start()
    deadline = time.monotonic() + 10
    while (await f.browser.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline
    assert (await f.get(callback)).status_code == 400
    assert f.fakes.token_requests == []
    assert await f.integrations(project) == []
