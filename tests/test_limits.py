"""Rate limits: failed authentication per address blocks that address for the window;
browser routes per address; other addresses are unaffected."""

from __future__ import annotations

import httpx2
import pytest

from broker import limits
from tests.conftest import Harness, new_project

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
