"""Security checklist, section A: the OAuth flow (install URL, authorize, callback, code
exchange), OA-01 to OA-15. Each test is named after the item it proves.

The broker runs in-process (ASGI) with a cookie jar as the browser; providers are the fakes
of tests/fakes over real loopback HTTP, or, where a test needs a token endpoint to answer
something no real provider should, a small endpoint of this module. Outcomes are asserted on
what the broker answered, the rows it wrote and the requests the provider received.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
import pytest
import redis.asyncio as aioredis
from packaging.requirements import Requirement
from packaging.version import Version
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker import connect, flow, registry, state
from broker.crypto import KeyRing
from broker.models import ConnectSession, Credential, Integration
from broker.settings import Settings
from broker.spec import OAuth2Provider, placeholders
from broker.state import MemoryState, RedisState, StateStore
from tests.conftest import new_project, service_missing
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import CLIENT_ID, CLIENT_SECRET, FakeState, shopify_hmac
from tests.fakes.server import serve
from tests.test_connect import (  # noqa: F401
    APP,
    PUBLIC,
    Flow,
    _approved_callback,
    flow_settings,
    make_flow,
    query,
)

pytestmark = pytest.mark.anyio
REDIS_URL = "redis://127.0.0.1:6379/0"
CALLBACK = f"{PUBLIC}/oauth/acme/callback"
# Every header a proxy or a client could use to suggest another origin.
SPOOFED = {"Host": "evil.example", "X-Forwarded-Host": "evil.example",
           "X-Forwarded-Proto": "http", "X-Forwarded-Port": "80",
           "Forwarded": "for=1.2.3.4;host=evil.example;proto=http", "X-Original-Host": "evil"}


@pytest.fixture
async def f(flow_settings: Settings, ring: KeyRing,  # noqa: F811
            fakes: tuple[str, FakeState]) -> AsyncIterator[Flow]:
    async for value in make_flow(flow_settings, ring, fakes):
        yield value


async def redis_state() -> RedisState:
    found = RedisState(REDIS_URL)
    if not await found.ping():
        await found.close()
        service_missing("Redis at 127.0.0.1:6379")
    return found


def state_key(value: str) -> str:
    return f"broker:oauth:{hashlib.sha256(value.encode()).hexdigest()}"


async def start(f: Flow, project: str, provider: str = "acme",
                return_url: str | None = None) -> tuple[str, str]:
    """Open a fresh connect link in the browser; returns (authorize URL, state)."""
    r = await f.get(await f.install_url(project, provider, return_url=return_url))
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    return location, query(location)["state"][0]


async def credentials_count(f: Flow, project: str) -> int:
    async with f.app.state.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(Credential).join(
            Integration, Integration.id == Credential.integration_id).where(
            Integration.project_id == project)) or 0)


def exchanged(f: Flow, code: str) -> list[dict[str, Any]]:
    return [r for r in f.fakes.token_requests if r["body"].get("code") == code]


# -- a token endpoint that answers what a test tells it to ---------------------------------

@dataclass
class TokenEndpoint:
    """``/token`` answers ``answer`` (status, raw body, content type, headers); every request
    to ``/token`` and ``/elsewhere`` is recorded."""

    url: str = ""
    answer: tuple[int, bytes, str, dict[str, str]] = (200, b"{}", "application/json", {})
    requests: list[dict[str, Any]] = field(default_factory=list)

    def reply(self, body: Any, status: int = 200, content_type: str = "application/json",
              **headers: str) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answer = (status, raw, content_type, headers)

    def at(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()

    async def record(request: Request) -> None:
        endpoint.requests.append({"path": request.url.path,
                                  "body": (await request.body()).decode()})

    async def token(request: Request) -> Response:
        await record(request)
        status, raw, content_type, headers = endpoint.answer
        return Response(raw, status_code=status, media_type=content_type, headers=headers)

    async def elsewhere(request: Request) -> Response:
        await record(request)
        return JSONResponse({"access_token": "at-elsewhere", "token_type": "Bearer"})

    app = Starlette(routes=[Route("/token", token, methods=["POST"]),
                            Route("/elsewhere", elsewhere, methods=["POST"])])
    with serve(app) as base:
        endpoint.url = base
        yield endpoint


@pytest.fixture
def endpoint(f: Flow, token_server: TokenEndpoint) -> TokenEndpoint:
    """``acme`` with its token endpoint moved to ``token_server``."""
    token_server.requests.clear()
    acme = f.app.state.providers["acme"]
    f.app.state.providers = {**f.app.state.providers,
                             "acme": replace(acme, token_url=f"{token_server.url}/token")}
    return token_server


# -- OA-01: install URLs ----------------------------------------------------------------

@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_oa_01_install_urls_are_opaque_single_use_ids_and_state_is_hashed_and_short_lived(
        flow_settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState],  # noqa: F811
        store_kind: str) -> None:
    store: StateStore = MemoryState() if store_kind == "memory" else await redis_state()
    settings = flow_settings if store_kind == "memory" else replace(flow_settings,
                                                                    redis_url=REDIS_URL)
    async for f in make_flow(settings, ring, fakes, state_store=store):
        project = new_project()
        key = await f.key(project)
        urls = [await f.install_url(project, "acme") for _ in range(2)]
        assert urls[0] != urls[1]
        tokens = []
        for url in urls:
            parts = urlsplit(url)
            assert f"{parts.scheme}://{parts.netloc}" == PUBLIC
            assert (parts.query, parts.fragment) == ("", "")
            token = parts.path.removeprefix("/connect/")
            # token_urlsafe(32): 43 characters, 256 bits from the CSPRNG.
            assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token), url
            assert key not in url and CLIENT_SECRET not in url and project not in url
            tokens.append(token)
        async with f.app.state.sessions() as s:
            rows = list(await s.scalars(select(ConnectSession).where(
                ConnectSession.project_id == project)))
        assert {r.token_hash for r in rows} == {connect.token_hash(t) for t in tokens}
        assert all(r.expires_at - r.created_at <= timedelta(minutes=10) for r in rows)

        opened = await f.get(urls[0])
        authorize = opened.headers["location"]
        value = query(authorize)["state"][0]
        assert len(base64.urlsafe_b64decode(value + "=")) >= 16  # at least 128 bits
        record = await store.get("oauth", value)
        assert record is not None and record["verifier"] not in authorize
        assert key not in authorize and CLIENT_SECRET not in authorize
        if isinstance(store, MemoryState):
            keys = dict(store._records)
            expires, raw = keys[state_key(value)]
            ttl = expires - time.monotonic()
            assert not any(value in k for k in keys)
        else:
            client = aioredis.from_url(REDIS_URL)
            try:
                ttl = await client.ttl(state_key(value))
                raw = (await client.get(state_key(value))).decode()
                assert await client.exists(f"broker:oauth:{value}") == 0
                await client.delete(state_key(value))
            finally:
                await client.aclose()
        assert 0 < ttl <= 600
        assert value not in raw  # stored under its hash, and not inside the record either


# -- OA-02: state --------------------------------------------------------------------------

async def test_oa_02_replayed_unknown_missing_duplicated_and_oversized_states_are_refused(
        f: Flow) -> None:
    project = new_project()
    callback = await _approved_callback(f, project)
    assert (await f.get(callback)).status_code == 302
    requests_after_success = len(f.fakes.token_requests)
    state_ = query(callback)["state"][0]
    code = query(callback)["code"][0]
    base = f"{PUBLIC}/oauth/acme/callback"
    for url in (callback,                                     # replayed
                f"{base}?code={code}&state={'x' * 43}",       # unknown
                f"{base}?code={code}",                        # missing
                f"{base}?code={code}&state={state_}&state={state_}",  # duplicated
                f"{base}?code={code}&state={'y' * 3000}",     # over 2 KB
                f"{base}?code={code}&state=%00%0d%0a"):
        r = await f.get(url)
        assert r.status_code == 400, url
        assert "location" not in r.headers
    assert len(f.fakes.token_requests) == requests_after_success
    assert len(await f.integrations(project)) == 1
    assert await credentials_count(f, project) == 1


async def test_oa_02_expired_state_is_refused(f: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    project = new_project()
    callback = await _approved_callback(f, project)
    # The in-process store's clock, moved past the state's TTL (only broker.state sees it).
    later = time.monotonic() + flow.STATE_TTL + 1
    monkeypatch.setattr(state, "time", SimpleNamespace(monotonic=lambda: later))
    r = await f.get(callback)
    assert r.status_code == 400
    assert f.fakes.token_requests == []
    assert await f.integrations(project) == []


async def test_oa_02_expired_state_in_redis_is_refused(
        flow_settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState]  # noqa: F811
        ) -> None:
    store = await redis_state()
    async for f in make_flow(replace(flow_settings, redis_url=REDIS_URL), ring, fakes,
                             state_store=store):
        project = new_project()
        callback = await _approved_callback(f, project)
        client = aioredis.from_url(REDIS_URL)
        try:
            key = state_key(query(callback)["state"][0])
            assert await client.pexpire(key, 1)  # Redis expires it, as the TTL would
            deadline = time.monotonic() + 5
            while await client.exists(key):
                assert time.monotonic() < deadline, "Redis did not expire the key"
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()
        assert (await f.get(callback)).status_code == 400
        assert f.fakes.token_requests == []
        assert await f.integrations(project) == []


async def test_oa_02_twenty_concurrent_callbacks_with_one_state_succeed_once(f: Flow) -> None:
    project = new_project()
    callback = await _approved_callback(f, project)
    results = await asyncio.gather(*(f.get(callback) for _ in range(20)))
    assert sorted(r.status_code for r in results) == [302] + [400] * 19
    assert len(f.fakes.token_requests) == 1
    assert len(await f.integrations(project)) == 1
    assert await credentials_count(f, project) == 1


async def test_oa_02_twenty_concurrent_callbacks_with_redis_state_succeed_once(
        flow_settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState]  # noqa: F811
        ) -> None:
    # GETDEL in Redis: one taker, however many requests race.
    store = await redis_state()
    async for f in make_flow(replace(flow_settings, redis_url=REDIS_URL), ring, fakes,
                             state_store=store):
        project = new_project()
        callback = await _approved_callback(f, project)
        results = await asyncio.gather(*(f.get(callback) for _ in range(20)))
        assert sorted(r.status_code for r in results) == [302] + [400] * 19
        assert len(f.fakes.token_requests) == 1
        assert await credentials_count(f, project) == 1


# -- OA-03: browser binding ----------------------------------------------------------------

async def test_oa_03_binding_cookie_is_host_only_httponly_secure_lax_and_stored_hashed(
        f: Flow) -> None:
    r = await f.get(await f.install_url(new_project(), "acme"))
    cookie = r.headers["set-cookie"]
    name, _, rest = cookie.partition("=")
    value = rest.split(";", 1)[0]
    attributes = {a.strip().split("=", 1)[0].lower(): a.strip().partition("=")[2]
                  for a in cookie.split(";")[1:]}
    assert name == "__Host-broker-bind"
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= set(attributes)
    assert "domain" not in attributes
    assert attributes["samesite"].lower() == "lax" and attributes["path"] == "/"
    assert 0 < int(attributes["max-age"]) <= 600
    record = await f.app.state.state_store.get("oauth", query(r.headers["location"])["state"][0])
    assert record["binding"] == hashlib.sha256(value.encode()).hexdigest()
    assert value not in json.dumps(record)


@pytest.mark.parametrize("cookie", [None, "z" * 43, "another_flow"])
async def test_oa_03_callback_without_this_browsers_binding_cookie_is_refused(
        f: Flow, cookie: str | None) -> None:
    project = new_project()
    callback = await _approved_callback(f, project)
    own = f.browser.cookies
    f.browser.cookies = httpx2.Cookies()
    if cookie == "another_flow":
        # The attacker's case inverted: a browser that holds a genuine cookie of its own,
        # from another install it started.
        await start(f, new_project())
        assert f.browser.cookies.get("__Host-broker-bind")
    elif cookie:
        f.browser.cookies.set("__Host-broker-bind", cookie, domain="broker.example.test")
    r = await f.get(callback)
    assert r.status_code == 400 and "another browser" in r.text
    # The state is spent: the browser that started cannot use the lured callback either.
    f.browser.cookies = own
    assert (await f.get(callback)).status_code == 400
    assert f.fakes.token_requests == []
    assert await f.integrations(project) == []


def test_oa_03_authlib_is_at_least_1_6_11_installed_and_pinned() -> None:
    # CVE-2025-68158 (fixed 1.6.6) and CVE-2026-41425 (fixed 1.6.11): cache-held state not
    # tied to the browser. The broker keeps its own state, but Authlib must not be older.
    assert Version(version("authlib")) >= Version("1.6.11")
    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    [pin] = [Requirement(d) for d in deps if Requirement(d).name.lower() == "authlib"]
    floors = [Version(s.version) for s in pin.specifier if s.operator in (">=", "==", "~=")]
    assert floors and max(floors) >= Version("1.6.11"), str(pin)
    assert not pin.specifier.contains("1.6.10")


# -- OA-04: PKCE ------------------------------------------------------------------------------

# Providers whose documentation has no PKCE (or which refuse it); see the README's
# security notes. Every other OAuth provider must get S256.
WITHOUT_PKCE = {"atlassian", "box", "cal-com", "intercom", "mailchimp", "notion", "pipedrive",
                "quickbooks", "shopify", "slack", "square", "stripe", "zoho-crm"}


def test_oa_04_every_authorize_url_carries_an_s256_challenge_of_a_fresh_verifier() -> None:
    from broker.settings import ClientCredentials

    client = ClientCredentials("client-id", "client-secret")
    oauth = {s: p for s, p in registry.load().items() if isinstance(p, OAuth2Provider)}
    assert {s for s, p in oauth.items() if not p.pkce} == WITHOUT_PKCE
    verifiers = set()
    for slug, provider in oauth.items():
        verifier = flow.new_verifier()
        verifiers.add(verifier)
        # RFC 7636 4.1: 43-128 unreserved characters; these are 64 random bytes.
        assert re.fullmatch(r"[A-Za-z0-9_-]{43,128}", verifier)
        assert len(base64.urlsafe_b64decode(verifier + "=" * (-len(verifier) % 4))) >= 32
        inputs = {f.name: f.example or (f.choices[0] if f.choices else "x")
                  for f in provider.fields if not f.secret}
        url = flow.authorize_url(provider, client, redirect_uri=f"{PUBLIC}/oauth/x/callback",
                                 state="s" * 43, verifier=verifier if provider.pkce else None,
                                 inputs=inputs)
        q = query(url)
        assert "plain" not in {v for values in q.values() for v in values}, slug
        assert verifier not in url, slug
        if not provider.pkce:
            assert "code_challenge" not in q, slug
            continue
        assert q["code_challenge_method"] == ["S256"], slug
        digest = hashlib.sha256(verifier.encode()).digest()
        assert q["code_challenge"] == [
            base64.urlsafe_b64encode(digest).rstrip(b"=").decode()], slug
        assert len(q["code_challenge"][0]) == 43
    assert len(verifiers) == len(oauth)


async def test_oa_04_verifier_lives_only_in_the_state_record_and_the_token_request(
        f: Flow) -> None:
    f.fakes.auto_approve = True
    project = new_project()
    authorize, value = await start(f, project, return_url=f"{APP}/done")
    verifier = (await f.app.state.state_store.get("oauth", value))["verifier"]
    callback = (await f.get(authorize)).headers["location"]
    assert verifier not in authorize and verifier not in callback
    assert all(verifier not in c for c in f.browser.cookies.values())
    done = await f.get(callback)
    assert verifier not in done.headers["location"]
    [sent] = f.fakes.token_requests
    assert sent["body"]["code_verifier"] == verifier
    assert [r for r in f.fakes.authorize_requests if verifier in json.dumps(r)] == []


async def test_oa_04_a_code_minted_for_another_transaction_stores_nothing(f: Flow) -> None:
    f.fakes.auto_approve = True
    project = new_project()
    mine, _ = await start(f, project)
    theirs, _ = await start(f, new_project())
    my_callback = (await f.get(mine)).headers["location"]
    their_code = query((await f.get(theirs)).headers["location"])["code"][0]
    my_state = query(my_callback)["state"][0]
    r = await f.get(f"{CALLBACK}?{urlencode({'code': their_code, 'state': my_state})}")
    assert r.status_code == 502 and "invalid_grant" in r.text
    [sent] = f.fakes.token_requests  # the fake refused the verifier: invalid_grant
    assert sent["body"]["code"] == their_code
    assert await f.integrations(project) == []
    assert await credentials_count(f, project) == 0


# -- OA-05: redirect_uri ------------------------------------------------------------------------

async def test_oa_05_redirect_uri_comes_from_configuration_only(f: Flow) -> None:
    f.fakes.auto_approve = True
    project = new_project()
    key = await f.key(project)
    path = f"/v1/projects/{project}/integrations/acme/install-url"
    r = await f.browser.post(f"{path}?redirect_uri=http://evil.example/cb", json=None,
                             headers={"X-API-Key": key, **SPOOFED})
    assert r.status_code == 422
    r = await f.browser.post(path, headers={"X-API-Key": key, **SPOOFED})
    install = r.json()["data"]["install_url"]
    assert install.startswith(f"{PUBLIC}/connect/")
    opened = await f.browser.get(f"{install}?redirect_uri=http://evil.example/cb",
                                 headers=SPOOFED)
    authorize = opened.headers["location"]
    [redirect_uri] = query(authorize)["redirect_uri"]
    assert redirect_uri == CALLBACK and redirect_uri.startswith("https://")
    callback = (await f.get(authorize)).headers["location"]
    done = await f.browser.get(callback, headers=SPOOFED)
    assert done.status_code == 200 and "connected" in done.text
    [sent] = f.fakes.token_requests
    # Identical in the authorize request and the token request, character for character.
    assert sent["body"]["redirect_uri"] == redirect_uri


# -- OA-06: mix-up --------------------------------------------------------------------------

async def test_oa_06_answer_delivered_to_another_providers_callback_is_refused(
        f: Flow) -> None:
    project = new_project()
    callback = await _approved_callback(f, project)
    r = await f.get(callback.replace("/oauth/acme/", "/oauth/shopify/"))
    assert r.status_code == 400
    assert f.fakes.token_requests == [] and f.fakes.shopify_token_requests == []
    assert await f.integrations(project) == []


def _with_issuer(settings: Settings, issuer: str, supported: bool) -> Settings:
    assert settings.providers_file is not None
    text = settings.providers_file.read_text().replace(
        "pkce = true\n", f'pkce = true\nissuer = "{issuer}"\n'
        f"iss_parameter_supported = {'true' if supported else 'false'}\n", 1)
    settings.providers_file.write_text(text)
    return settings


@pytest.mark.parametrize(("supported", "iss", "accepted"), [
    (True, "{issuer}", True),
    (True, None, False),                      # declared supported: iss is required
    (True, "https://evil.example/oauth2", False),
    (True, "{issuer}/", False),               # plain string equality, no normalisation
    (True, "{ISSUER}", False),
    (True, ["{issuer}", "{issuer}"], False),  # repeated
    (False, "{issuer}", True),
    (False, None, True),                      # not sent by this provider: nothing to check
    (False, "https://evil.example/oauth2", False),
])
async def test_oa_06_iss_must_be_the_issuer_the_flow_started_with(
        flow_settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState],  # noqa: F811
        supported: bool, iss: str | list[str] | None, accepted: bool) -> None:
    issuer = f"{fakes[0]}/oauth2"
    settings = _with_issuer(flow_settings, issuer, supported)
    async for f in make_flow(settings, ring, fakes):
        f.fakes.auto_approve = True
        project = new_project()
        authorize, _ = await start(f, project)
        callback = (await f.get(authorize)).headers["location"]
        given = [iss] if isinstance(iss, str) else iss or []
        for value in given:
            callback += "&" + urlencode({"iss": value.format(issuer=issuer,
                                                             ISSUER=issuer.upper())})
        r = await f.get(callback)
        if accepted:
            assert r.status_code == 200 and len(f.fakes.token_requests) == 1
            assert len(await f.integrations(project)) == 1
        else:
            assert r.status_code == 400 and "invalid_issuer" in r.text
            assert f.fakes.token_requests == []
            assert await f.integrations(project) == []


async def test_oa_06_error_responses_need_the_issuer_too(
        flow_settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState]  # noqa: F811
        ) -> None:
    settings = _with_issuer(flow_settings, f"{fakes[0]}/oauth2", True)
    async for f in make_flow(settings, ring, fakes):
        project = new_project()
        _, value = await start(f, project, return_url=f"{APP}/done")
        r = await f.get(f"{CALLBACK}?error=access_denied&state={value}")
        assert r.headers["location"] == (
            f"{APP}/done?status=error&provider=acme&error=invalid_issuer")
        assert [e.details["reason"] for e in await f.events(project)] == ["invalid_issuer"]


# -- OA-07: open redirect ----------------------------------------------------------------

RETURN_URL_TRICKS = [
    "https://app.example.test@evil.example/", "//evil.example", "/\\evil.example",
    "https://app.example.test.evil.example/", "javascript:alert(1)",
    "https://evil.example\\@app.example.test/", "https://app.example.test:8443/",
    "http://app.example.test/", "https://app.example.test\t.evil/",
    "https://app.example.tést/", "data:text/html,<script>alert(1)</script>", "/done",
    # mixed case
    "JaVaScRiPt:alert(1)", "HTTPS://APP.EXAMPLE.TEST@EVIL.EXAMPLE/", "//EVIL.example",
    "https://APP.example.test.Evil.Example/",
    # percent-encoded
    "HTTPS://APP.EXAMPLE.TEST%2F@evil.example", "https://%61pp.example.test/",
    "https://app.example.test%40evil.example/", "https://app.example.test%2eevil.example/",
    "%2F%2Fevil.example", "/%5Cevil.example", "https:%2F%2Fevil.example",
    "javascript%3Aalert(1)", "https://app.example.test%00.evil.example/",
]


async def test_oa_07_return_url_tricks_get_422_at_install_url_and_connect_sessions(
        f: Flow) -> None:
    from broker import store

    project = new_project()
    key = await f.key(project)
    async with f.app.state.sessions() as s:
        service = (await store.create_service_token(s, "main-api"))[1]
    for url in RETURN_URL_TRICKS:
        r = await f.browser.post(f"/v1/projects/{project}/integrations/acme/install-url",
                                 json={"return_url": url}, headers={"X-API-Key": key})
        assert r.status_code == 422, url
        r = await f.browser.post(f"/internal/v1/projects/{project}/connect-sessions",
                                 json={"provider": "acme", "return_url": url},
                                 headers={"Authorization": f"Bearer {service}"})
        assert r.status_code == 422, url
    async with f.app.state.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(ConnectSession).where(
            ConnectSession.project_id == project)) == 0


@pytest.mark.parametrize("outcome", ["success", "access_denied"])
async def test_oa_07_the_outcome_goes_only_to_the_stored_url_without_code_or_state(
        f: Flow, outcome: str) -> None:
    f.fakes.auto_approve = True
    stored = f"{APP}/settings/integrations?tab=connected"
    project = new_project()
    authorize, value = await start(f, project, return_url=stored)
    if outcome == "success":
        callback = (await f.get(authorize)).headers["location"]
    else:
        callback = f"{CALLBACK}?error=access_denied&error_description=no&state={value}"
    done = await f.get(callback)
    assert done.status_code == 302
    target = done.headers["location"]
    expected = {"status": "success" if outcome == "success" else "error", "provider": "acme",
                **({} if outcome == "success" else {"error": "access_denied"})}
    assert target == f"{stored}&{urlencode(expected)}"
    for secret in (value, *query(callback).get("code", []), *f.fakes.access_tokens):
        assert secret not in target


# -- OA-08: response headers and provider errors (P1) ---------------------------------------

def _browser_safe(r: httpx2.Response) -> None:
    assert r.headers["referrer-policy"] == "no-referrer", r.url
    assert r.headers["cache-control"] == "no-store", r.url
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    if r.headers.get("content-type", "").startswith("text/html"):
        body = r.text.lower()
        for tag in ("<script", "<img", "<link", "<iframe", " src=", "href=", "url("):
            assert tag not in body, (tag, r.url)


async def test_oa_08_install_start_and_callback_responses_keep_out_referrers_caches_frames(
        f: Flow) -> None:
    f.fakes.auto_approve = True
    seen: list[httpx2.Response] = []
    # Start (302) and success page.
    authorize, _ = await start(f, new_project())
    callback = (await f.get(authorize)).headers["location"]
    seen.append(await f.get(callback))
    # Start (302) and success redirect to the app.
    r = await f.get(await f.install_url(new_project(), "acme"))
    seen.append(r)
    seen.append(await f.get((await f.get(r.headers["location"])).headers["location"]))
    # Errors: a refused consent (page and redirect), a bad state, a spent link, a form.
    _, value = await start(f, new_project())
    seen.append(await f.get(f"{CALLBACK}?error=access_denied&state={value}"))
    _, value = await start(f, new_project(), return_url=f"{APP}/done")
    seen.append(await f.get(f"{CALLBACK}?error=access_denied&state={value}"))
    seen.append(await f.get(f"{CALLBACK}?code=c&state={'x' * 43}"))
    seen.append(await f.get(f"{PUBLIC}/connect/{'a' * 43}"))
    seen.append(await f.get(await f.install_url(new_project(), "shopify")))
    assert [r.status_code for r in seen] == [200, 302, 302, 400, 302, 400, 410, 200]
    for response in seen:
        _browser_safe(response)


async def test_oa_08_refused_consent_consumes_the_state_stores_nothing_and_is_cancelled(
        f: Flow) -> None:
    project = new_project()
    _, value = await start(f, project, return_url=f"{APP}/done")
    denied = f"{CALLBACK}?error=access_denied&error_description=no&state={value}"
    r = await f.get(denied)
    assert r.headers["location"] == (
        f"{APP}/done?status=error&provider=acme&error=access_denied")
    assert f.fakes.token_requests == []
    assert await f.integrations(project) == []
    assert await credentials_count(f, project) == 0
    assert [e.type for e in await f.events(project)] == ["integration.install_cancelled"]
    assert await f.app.state.state_store.get("oauth", value) is None
    assert (await f.get(denied)).status_code == 400


# -- OA-09: the code exchange is never retried ----------------------------------------------

@pytest.mark.parametrize("return_url", [None, f"{APP}/done"])
@pytest.mark.parametrize("mode", ["server_error", "hang"])
async def test_oa_09_a_failed_exchange_is_posted_once_and_asks_for_a_restart(
        f: Flow, mode: str, return_url: str | None) -> None:
    f.fakes.auto_approve = True
    f.fakes.token_mode = mode
    f.fakes.hang_seconds = 10  # past the broker's 3 s provider timeout
    project = new_project()
    authorize, _ = await start(f, project, return_url=return_url)
    callback = (await f.get(authorize)).headers["location"]
    code = query(callback)["code"][0]
    r = await f.get(callback)
    if return_url is None:
        assert r.status_code == 502 and "Restart the install" in r.text
    else:
        outcome = query(r.headers["location"])
        assert outcome["status"] == ["error"] and outcome["error"] in (
            ["timeout"], ["bad_response"])
        assert "code" not in outcome and "state" not in outcome
    assert len(exchanged(f, code)) == 1
    assert (await f.get(callback)).status_code == 400  # the state is spent: restart only
    assert len(exchanged(f, code)) == 1
    assert f.fakes.token_requests == exchanged(f, code)
    assert await f.integrations(project) == []
    assert [e.type for e in await f.events(project)] == ["integration.install_failed"]


# -- OA-10: token responses (P1) ------------------------------------------------------------

TOKEN_DEFECTS: dict[str, tuple[Any, str]] = {
    "no_access_token": ({"token_type": "Bearer", "expires_in": 3600}, "application/json"),
    "empty_access_token": ({"access_token": "", "token_type": "Bearer"}, "application/json"),
    "mac_token": ({"access_token": "at-1", "token_type": "mac"}, "application/json"),
    "not_json": (b"<!doctype html><p>Please sign in.</p>", "text/html"),
    "json_array": ([{"access_token": "at-1", "token_type": "Bearer"}], "application/json"),
    "over_64_kib": ({"access_token": "at-1", "token_type": "Bearer", "pad": "x" * 70_000},
                    "application/json"),
    "error_in_200": ({"error": "invalid_grant"}, "application/json"),
}


@pytest.mark.parametrize("defect", sorted(TOKEN_DEFECTS))
async def test_oa_10_unusable_token_responses_store_nothing_and_answer_502(
        f: Flow, endpoint: TokenEndpoint, defect: str) -> None:
    body, content_type = TOKEN_DEFECTS[defect]
    endpoint.reply(body, content_type=content_type)
    project = new_project()
    _, value = await start(f, project)
    r = await f.get(f"{CALLBACK}?code=c0de&state={value}")
    assert r.status_code == 502, r.text
    assert len(endpoint.at("/token")) == 1
    assert await f.integrations(project) == []
    assert await credentials_count(f, project) == 0


async def test_oa_10_bearer_is_compared_case_insensitively(
        f: Flow, endpoint: TokenEndpoint) -> None:
    endpoint.reply({"access_token": "at-1", "token_type": "BeArEr"})
    project = new_project()
    _, value = await start(f, project)
    assert (await f.get(f"{CALLBACK}?code=c0de&state={value}")).status_code == 200
    assert await credentials_count(f, project) == 1


async def test_oa_10_stored_scopes_are_the_granted_ones(f: Flow) -> None:
    f.fakes.auto_approve = True
    f.fakes.granted_scope = "read"
    project = new_project()
    authorize, _ = await start(f, project)
    assert query(authorize)["scope"] == ["read write"]
    assert (await f.get((await f.get(authorize)).headers["location"])).status_code == 200
    [integration] = await f.integrations(project)
    async with f.app.state.sessions() as s:
        assert (await s.get(Credential, integration.id)).scopes == ["read"]
    [event] = await f.events(project)
    assert event.details["scopes"] == ["read"]


async def test_oa_10_callers_cannot_choose_scopes(f: Flow) -> None:
    from broker import store

    project = new_project()
    key = await f.key(project)
    path = f"/v1/projects/{project}/integrations/acme/install-url"
    r = await f.browser.post(f"{path}?scope=admin", headers={"X-API-Key": key})
    assert r.status_code == 422
    r = await f.browser.post(path, json={"scope": "admin"}, headers={"X-API-Key": key})
    assert r.status_code == 422
    async with f.app.state.sessions() as s:
        service = (await store.create_service_token(s, "main-api"))[1]
    r = await f.browser.post(f"/internal/v1/projects/{project}/connect-sessions",
                             json={"provider": "acme", "params": {"scope": "admin"}},
                             headers={"Authorization": f"Bearer {service}"})
    assert r.status_code == 422
    opened = await f.get(await f.install_url(project, "acme") + "?scope=admin&scope=root")
    assert query(opened.headers["location"])["scope"] == ["read write"]


# -- OA-11: Shopify's signed callback --------------------------------------------------------

async def _shopify_callback(f: Flow, project: str, shop: str = "acme.myshopify.com") -> str:
    f.fakes.auto_approve = True
    page = await f.get(await f.install_url(project, "shopify", return_url=None))
    action = page.text.split("action='", 1)[1].split("'", 1)[0]
    r = await f.browser.post(action, data={"shop": shop})
    assert r.status_code == 302, r.text
    return str((await f.get(r.headers["location"])).headers["location"])


def _without(url: str, name: str) -> str:
    base, _, q = url.partition("?")
    return base + "?" + "&".join(p for p in q.split("&") if not p.startswith(f"{name}="))


@pytest.mark.parametrize("knob", ["none", "tamper", "missing_hmac", "empty_hmac", "stale",
                                  "future", "repeated", "repeated_hmac", "other_shop"])
async def test_oa_11_shopify_callback_signature_time_and_repeats_are_checked_first(
        f: Flow, knob: str) -> None:
    if knob == "tamper":
        f.fakes.shopify_tamper_hmac = True
    if knob in ("stale", "future"):  # just outside Shopify's 90 s tolerance
        f.fakes.shopify_timestamp_offset = -95 if knob == "stale" else 95
    project = new_project()
    callback = await _shopify_callback(f, project)
    timestamp = query(callback)["timestamp"][0]
    callback = {
        "missing_hmac": lambda u: _without(u, "hmac"),
        "empty_hmac": lambda u: _without(u, "hmac") + "&hmac=",
        "repeated": lambda u: u + f"&timestamp={timestamp}",
        "repeated_hmac": lambda u: u + f"&hmac={query(u)['hmac'][0]}",
        "other_shop": lambda u: u.replace("shop=acme.myshopify.com", "shop=evil.myshopify.com"),
    }.get(knob, lambda u: u)(callback)
    r = await f.get(callback)
    if knob == "none":
        assert r.status_code == 200 and len(f.fakes.shopify_token_requests) == 1
        return
    assert r.status_code == 400 and "invalid_callback" in r.text
    assert f.fakes.shopify_token_requests == [] and f.fakes.api_requests == []
    assert await f.integrations(project) == []


# -- OA-12: tenant-supplied hosts ---------------------------------------------------------

HOSTILE_SHOPS = [
    "evil.com", "evil.com#.myshopify.com", "evil.com/x.myshopify.com", "evil.com/x",
    "@evil.com", "evil.com@acme.myshopify.com", "x.myshopify.com.evil.com",
    "evil.com?.myshopify.com", "evil.com\\.myshopify.com", "127.0.0.1", "[::1]",
    "2130706433", "0x7f000001", "169.254.169.254", "x.myshopify.com:443",
    "x.myshopify.com.", "xn--80ak6aa92e.com", "аcme.myshopify.com",  # Cyrillic a
    "acme.myshopify.cοm",  # Greek omicron
    "ａｃｍｅ.myshopify.com", "acme。myshopify.com", "acme.myshopify.com%2F@evil.com",
    "acme.myshopify.com\r\nX: y", "-acme.myshopify.com", ".myshopify.com", "",
]


@pytest.mark.parametrize("shop", HOSTILE_SHOPS)
async def test_oa_12_shopify_shop_must_be_a_shopify_domain(f: Flow, shop: str) -> None:
    from broker import store

    project = new_project()
    page = await f.get(await f.install_url(project, "shopify"))
    action = page.text.split("action='", 1)[1].split("'", 1)[0]
    r = await f.browser.post(action, data={"shop": shop})
    assert r.status_code == 422, shop
    async with f.app.state.sessions() as s:
        service = (await store.create_service_token(s, "main-api"))[1]
    r = await f.browser.post(f"/internal/v1/projects/{project}/connect-sessions",
                             json={"provider": "shopify", "params": {"shop": shop}},
                             headers={"Authorization": f"Bearer {service}"})
    assert r.status_code == 422, shop
    assert f.fakes.shopify_authorize_requests == [] and f.fakes.shopify_token_requests == []


def test_oa_12_every_host_built_from_tenant_input_is_pinned_to_the_providers_domain() -> None:
    """Catalog-wide: a field that fills a URL placeholder is a fixed choice or a pattern
    whose matches stay under one domain; the hostile forms of its own example fail it."""
    checked = 0
    for slug, provider in registry.load().items():
        used = {name for url in provider.urls().values() for name in placeholders(url)}
        for fld in provider.fields:
            if fld.name not in used or fld.choices:
                continue
            good = fld.example
            assert fld.pattern and good, (slug, fld.name)
            assert re.fullmatch(fld.pattern, good)
            for hostile in (f"evil.com#.{good}", f"evil.com/{good}", "@evil.com",
                            f"{good}@evil.com", f"{good}.evil.com", f"{good}/evil",
                            f"{good}:8080", f"{good}.", "127.0.0.1", "[::1]", f"{good}\n",
                            f"evil.com?{good}", f"{good}%2F@evil.com",
                            good.replace("a", "а", 1)):  # a Cyrillic a
                assert not re.fullmatch(fld.pattern, hostile), (slug, fld.name, hostile)
            checked += 1
    assert checked >= 4  # shopify, zendesk, freshdesk, gorgias, twilio


async def test_oa_12_a_signed_callback_for_another_shop_never_reaches_a_token_endpoint(
        f: Flow) -> None:
    project = new_project()
    callback = await _shopify_callback(f, project)
    # Correctly signed with the app's secret, but for a shop other than the one pinned.
    params = {k: v[0] for k, v in query(callback).items() if k != "hmac"}
    params["shop"] = "other-store.myshopify.com"
    params["hmac"] = shopify_hmac(params, CLIENT_SECRET)
    r = await f.get(f"{PUBLIC}/oauth/shopify/callback?{urlencode(params)}")
    assert r.status_code == 400
    assert f.fakes.shopify_token_requests == []
    assert await f.integrations(project) == []


async def test_oa_12_token_requests_follow_no_redirects(
        f: Flow, endpoint: TokenEndpoint) -> None:
    endpoint.reply({}, status=307, location=f"{endpoint.url}/elsewhere")
    project = new_project()
    _, value = await start(f, project)
    r = await f.get(f"{CALLBACK}?code=c0de&state={value}")
    assert r.status_code == 502
    assert len(endpoint.at("/token")) == 1 and endpoint.at("/elsewhere") == []
    assert await f.integrations(project) == []


# -- OA-13: connected-account identity (P1) ------------------------------------------------

async def _shopify_secrets(f: Flow, project: str) -> tuple[str, dict[str, Any]]:
    from broker import store

    [integration] = await f.integrations(project)
    async with f.app.state.sessions() as s:
        credential = await s.get(Credential, integration.id)
        opened = store.open_credential(f.app.state.ring, integration, credential)
    return opened.access_token, integration.provider_metadata


async def test_oa_13_a_reinstall_for_another_shop_never_overwrites_the_connected_one(
        f: Flow) -> None:
    project = new_project()
    assert (await f.get(await _shopify_callback(f, project))).status_code == 200
    token_a, metadata = await _shopify_secrets(f, project)
    assert metadata["shop"] == "acme.myshopify.com"

    r = await f.get(await _shopify_callback(f, project, shop="other-store.myshopify.com"))
    assert r.status_code == 409 and "account_mismatch" in r.text
    assert await _shopify_secrets(f, project) == (token_a, metadata)
    assert [e.type for e in await f.events(project)] == [
        "integration.installed", "integration.install_failed"]

    # The same shop again renews its own credential, however the person typed its name.
    r = await f.get(await _shopify_callback(f, project, shop="Acme.myshopify.com"))
    assert r.status_code == 200, r.text
    token_renewed, _ = await _shopify_secrets(f, project)
    assert token_renewed != token_a

    # Once disconnected, another shop is a new connection.
    key = await f.key(project)
    gone = await f.browser.delete(f"/v1/projects/{project}/integrations/shopify",
                                  headers={"X-API-Key": key})
    assert gone.status_code == 200
    assert (await f.get(await _shopify_callback(
        f, project, shop="other-store.myshopify.com"))).status_code == 200
    assert (await _shopify_secrets(f, project))[1]["shop"] == "other-store.myshopify.com"


def test_oa_13_accounts_are_keyed_on_immutable_ids() -> None:
    providers = registry.load()
    assert providers["shopify"].account_id == "shop"  # type: ignore[attr-defined]
    assert providers["github-app"].account_id == "installation_id"  # type: ignore[attr-defined]
    for slug, key in (("slack", "team.id"), ("hubspot", "hub_id"),
                      ("notion", "workspace_id")):
        assert providers[slug].account_id == key  # type: ignore[attr-defined]
        # Kept from the token response, so a reinstall has something to compare.
        assert key in providers[slug].token_metadata  # type: ignore[attr-defined]
    for slug, provider in providers.items():
        key = getattr(provider, "account_id", None) or ""
        assert not re.search(r"email|name|login", key), slug


# -- OA-14: rotating refresh tokens (P1) -----------------------------------------------------

async def test_oa_14_a_rotated_refresh_token_is_stored_with_its_access_token(f: Flow) -> None:
    from broker import store

    f.fakes.auto_approve = True
    project = new_project()
    authorize, _ = await start(f, project)
    assert (await f.get((await f.get(authorize)).headers["location"])).status_code == 200
    [integration] = await f.integrations(project)
    seen: list[str] = []
    for _ in range(3):  # the fake retires each refresh token the moment it is used
        fresh, credential = await f.app.state.credentials.refresh(
            integration.id, margin=timedelta(days=1))
        assert fresh.health_status == "healthy" and credential is not None
        opened = store.open_credential(f.app.state.ring, fresh, credential)
        assert opened.access_token in f.fakes.access_tokens
        assert set(f.fakes.refresh_tokens) == {opened.refresh_token}
        seen.append(opened.refresh_token)
    refreshes = [r for r in f.fakes.token_requests if r["grant_type"] == "refresh_token"]
    assert len(refreshes) == 3 and len(set(seen)) == 3
    assert [r["body"]["refresh_token"] for r in refreshes[1:]] == seen[:-1]


# -- OA-15: GitHub App installation ids ---------------------------------------------------

@pytest.fixture
def github_api(f: Flow) -> Iterator[Any]:
    """``github-app`` pointed at the fake authorization server, with the REST API's
    ``/user/installations`` served by a recorder."""
    from tests.fakes.recorder import make_recorder

    app, recorder = make_recorder()
    with serve(app) as base:
        recorder.serve("GET", "/user/installations", 200, {"total_count": 1, "installations": [
            {"id": 25381, "account": {"login": "octo-org", "type": "Organization"}}]})
        github_app = f.app.state.providers["github-app"]
        f.app.state.providers = {**f.app.state.providers, "github-app": replace(
            github_app, authorize_url=f"{f.fake_url}/oauth2/authorize",
            token_url=f"{f.fake_url}/oauth2/token", api_base_url=base)}
        from broker.settings import ClientCredentials
        f.app.state.clients = {**f.app.state.clients,
                               "github-app": ClientCredentials(CLIENT_ID, CLIENT_SECRET)}
        yield recorder


@pytest.mark.parametrize("installation_id", ["25381", "999", "25381&installation_id=999"])
async def test_oa_15_an_installation_id_is_linked_only_when_the_users_token_sees_it(
        f: Flow, github_api: Any, installation_id: str) -> None:
    f.fakes.auto_approve = True
    project = new_project()
    authorize, _ = await start(f, project, provider="github-app")
    callback = (await f.get(authorize)).headers["location"]
    r = await f.get(f"{callback}&installation_id={installation_id}&setup_action=install")
    lookups = github_api.at("/user/installations")
    if "&" in installation_id:
        assert lookups == []  # a repeated id is refused before any lookup
    else:
        [token] = f.fakes.access_tokens
        assert [x["headers"]["authorization"] for x in lookups] == [f"Bearer {token}"]
    if installation_id == "25381":
        assert r.status_code == 200
        [integration] = await f.integrations(project)
        assert integration.provider_metadata["installation_id"] == 25381
    else:
        assert r.status_code == 400 and "install_not_confirmed" in r.text
        assert await f.integrations(project) == []
        assert await credentials_count(f, project) == 0


async def test_oa_15_a_setup_url_hit_without_this_flows_state_links_nothing(
        f: Flow, github_api: Any) -> None:
    project = new_project()
    await start(f, project, provider="github-app")
    r = await f.get(f"{PUBLIC}/oauth/github-app/callback?installation_id=25381"
                    "&setup_action=install")
    assert r.status_code == 400
    assert github_api.requests == [] and f.fakes.token_requests == []
    assert await f.integrations(project) == [] and await f.events(project) == []
