"""Rate limits: failed authentication per address blocks that address for the window;
browser routes per address; other addresses are unaffected."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from broker import limits
from broker.errors import ConfigError
from broker.settings import Settings
from tests.conftest import Database, Harness, new_project

pytestmark = pytest.mark.anyio


def client_from(harness: Harness, address: str) -> httpx2.AsyncClient:
    transport = httpx2.ASGITransport(app=harness.app, client=(address, 4321))
    return httpx2.AsyncClient(transport=transport, base_url="http://broker.test")


async def test_failed_api_key_attempts_block_the_address(harness: Harness,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "AUTH_FAILURES", 5)
    project = new_project()
    good = await harness.key(project, "read")
    url = f"/v1/projects/{project}/integrations"
    async with client_from(harness, "203.0.113.7") as guesser, \
            client_from(harness, "198.51.100.9") as other:
        for _ in range(5):
            r = await guesser.get(url, headers={"X-API-Key": "riq_" + "A" * 50})
            assert r.status_code == 401
        r = await guesser.get(url, headers={"X-API-Key": "riq_" + "B" * 50})
        assert (r.status_code, r.json()["error"]["code"]) == (429, "rate_limited")
        # Right or wrong, nothing more from that address until the window ends.
        assert (await guesser.get(url, headers={"X-API-Key": good})).status_code == 429
        assert (await other.get(url, headers={"X-API-Key": good})).status_code == 200


async def test_failed_service_tokens_count_too(harness: Harness,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "AUTH_FAILURES", 3)
    url = f"/internal/v1/projects/{new_project()}/integrations/slack/credentials"
    async with client_from(harness, "203.0.113.8") as guesser:
        codes = [(await guesser.get(url, headers={"Authorization": f"Bearer rst_{i}"}))
                 .status_code for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]


async def test_browser_routes_are_rate_limited(harness: Harness,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "BROWSER_REQUESTS", 4)
    async with client_from(harness, "203.0.113.9") as browser, \
            client_from(harness, "198.51.100.10") as other:
        codes = [(await browser.get(f"/connect/{'a' * 43}")).status_code for _ in range(6)]
        assert codes == [410] * 4 + [429] * 2
        assert (await other.get(f"/connect/{'a' * 43}")).status_code == 410
        r = await browser.get(f"/oauth/slack/callback?state={'s' * 43}&code=c")
        assert r.status_code == 429 and "Too many requests" in r.text


async def test_redis_counters_expire_with_their_window() -> None:
    import secrets as _secrets

    from broker.state import RedisState
    from tests.conftest import service_missing

    state = RedisState("redis://127.0.0.1:6379/0")
    try:
        if not await state.ping():
            service_missing("Redis at 127.0.0.1:6379")
        name = f"test:{_secrets.token_hex(6)}"
        assert [await state.hit(name, 30) for _ in range(3)] == [1, 2, 3]
        assert await state.count(name) == 3
        ttl = await state._call("TTL", f"broker:rate:{name}")
        assert 0 < int(ttl) <= 30
        assert await state.count("test:never-hit") == 0
    finally:
        await state.close()


@pytest.mark.parametrize("proxy_trusted", [True, False])
def test_behind_a_listed_proxy_each_client_has_its_own_budget(
        own_database: Database, monkeypatch: pytest.MonkeyPatch, proxy_trusted: bool) -> None:
    """`broker serve` as it runs uvicorn, behind a proxy on 127.0.0.1: with the proxy in
    BROKER_FORWARDED_ALLOW_IPS each client named by X-Forwarded-For has its own failure
    budget; with it absent, the header is ignored and every client shares the proxy's."""
    import os

    import uvicorn

    from broker import cli
    from tests.conftest import ring_json
    from tests.fakes.server import running

    monkeypatch.setattr(limits, "AUTH_FAILURES", 3)
    allowed = "127.0.0.0/8" if proxy_trusted else "192.0.2.10"
    settings = Settings.from_env({
        "BROKER_DATABASE_URL": own_database.url, "BROKER_FORWARDED_ALLOW_IPS": allowed,
        "BROKER_KEYS": ring_json({"kproxy": os.urandom(32)}, "kproxy")})
    started: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append((app, options)))
    assert cli._serve(settings, "127.0.0.1", 8000, 1) == 0
    [(app, options)] = started
    url = f"/v1/projects/{new_project()}/integrations"
    wrong = {"X-API-Key": "riq_" + "A" * 50}
    with running(app, options) as base, httpx2.Client(base_url=base, trust_env=False) as http:
        guesser = [http.get(url, headers={**wrong, "X-Forwarded-For": "203.0.113.1"})
                   .status_code for _ in range(4)]
        other = http.get(url, headers={**wrong, "X-Forwarded-For": "198.51.100.2"}).status_code
    assert guesser == [401, 401, 401, 429]
    assert other == (401 if proxy_trusted else 429)


@pytest.mark.parametrize("value", ["*", "proxy.internal", "10.0.0.0/33"])
def test_forwarded_allow_ips_must_be_addresses(value: str) -> None:
    with pytest.raises(ConfigError, match="BROKER_FORWARDED_ALLOW_IPS"):
        Settings.from_env({"BROKER_FORWARDED_ALLOW_IPS": value})
