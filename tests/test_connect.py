"""The browser install flow over real HTTP against fake providers (tests/fakes): a generic
OAuth2 provider with PKCE declared in BROKER_PROVIDERS_FILE, Shopify (an input before the
redirect, a signed callback), Postmark (an API key verified before it is stored).

What the flow refuses (states, binding, mix-up, return URLs, signatures, shops, failed
exchanges) is proved item by item in tests/security/test_oauth_flow.py."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

from broker import store
from broker.app import create_app
from broker.crypto import KeyRing
from broker.models import AuditEvent, Credential, Integration
from broker.settings import Settings
from broker.state import MemoryState, StateStore
from tests.conftest import Database, new_project
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import CLIENT_ID, CLIENT_SECRET, POSTMARK_TOKEN, FakeState

pytestmark = pytest.mark.anyio
PUBLIC = "https://broker.example.test"
APP = "https://app.example.test"


def providers_toml(fake: str) -> str:
    return f"""
[providers.acme]
name = "Acme"
category = "developer-tools"
authorize_url = "{fake}/oauth2/authorize"
token_url = "{fake}/oauth2/token"
revoke_url = "{fake}/oauth2/revoke"
scopes = ["read", "write"]
pkce = true
client_auth_method = "client_secret_basic"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"

[providers.shopify]
authorize_url = "{fake}/shopify/{{shop}}/admin/oauth/authorize"
token_url = "{fake}/shopify/{{shop}}/admin/oauth/access_token"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"

[providers.postmark]
verify_url = "{fake}/postmark/server"
health_check_url = "{fake}/postmark/server"
"""


@dataclass
class Flow:
    """A broker app, a browser (cookie jar; the broker over ASGI, everything else over real
    HTTP) and the fakes' records."""

    app: Any
    browser: httpx2.AsyncClient
    fakes: FakeState
    fake_url: str

    async def key(self, project: str) -> str:
        async with self.app.state.sessions() as s:
            return (await store.create_api_key(s, project, ("read", "integrations:write")))[1]

    async def install_url(self, project: str, provider: str,
                          return_url: str | None = f"{APP}/done") -> str:
        key = await self.key(project)
        r = await self.browser.post(
            f"/v1/projects/{project}/integrations/{provider}/install-url",
            json={"return_url": return_url} if return_url else None,
            headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        return str(r.json()["data"]["install_url"])

    async def get(self, url: str, **kwargs: Any) -> httpx2.Response:
        """A top-level navigation: the broker in-process, other hosts over real HTTP."""
        if url.startswith(PUBLIC):
            return await self.browser.get(url, **kwargs)
        async with httpx2.AsyncClient(trust_env=False) as real:
            return await real.get(url, **kwargs)

    async def to_provider(self, project: str, provider: str) -> httpx2.Response:
        r = await self.get(await self.install_url(project, provider))
        assert r.status_code == 302, r.text
        return r

    async def integrations(self, project: str) -> list[Integration]:
        async with self.app.state.sessions() as s:
            return list(await s.scalars(select(Integration).where(
                Integration.project_id == project)))

    async def events(self, project: str) -> list[AuditEvent]:
        async with self.app.state.sessions() as s:
            return list(await s.scalars(select(AuditEvent).where(
                AuditEvent.project_id == project, AuditEvent.type.like("integration.%"))
                .order_by(AuditEvent.id)))


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


@pytest.fixture
def flow_settings(database: Database, tmp_path: Path, fakes: tuple[str, FakeState]
                  ) -> Settings:
    path = tmp_path / "providers.toml"
    path.write_text(providers_toml(fakes[0]))
    return Settings(database_url=database.url, public_url=PUBLIC, providers_file=path,
                    return_url_allowlist=(APP,), provider_timeout=3.0)


async def make_flow(settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState],
                    state_store: StateStore | None = None) -> AsyncIterator[Flow]:
    app = create_app(settings, ring=ring, state_store=state_store)
    async with LifespanManager(app) as manager:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app),
                                      base_url=PUBLIC) as browser:
            yield Flow(app, browser, fakes[1], fakes[0])


@pytest.fixture
async def f(flow_settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState]
            ) -> AsyncIterator[Flow]:
    async for value in make_flow(flow_settings, ring, fakes):
        yield value


# -- a generic OAuth2 provider with PKCE, declared in the providers file -------------------

async def test_generic_oauth_install_end_to_end(f: Flow) -> None:
    f.fakes.auto_approve = True
    project = new_project()
    start = await f.to_provider(project, "acme")
    authorize = start.headers["location"]
    assert authorize.startswith(f"{f.fake_url}/oauth2/authorize?")
    q = query(authorize)
    redirect_uri = f"{PUBLIC}/oauth/acme/callback"
    assert q["client_id"] == [CLIENT_ID] and q["response_type"] == ["code"]
    assert q["redirect_uri"] == [redirect_uri]
    assert q["scope"] == ["read write"]
    assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43
    assert len(q["state"][0]) >= 43
    assert set(q) == {"client_id", "response_type", "redirect_uri", "scope", "state",
                      "code_challenge", "code_challenge_method"}
    cookie = start.headers["set-cookie"]
    assert cookie.startswith("__Host-broker-bind=")
    for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/", "Max-Age=600"):
        assert attribute.lower() in cookie.lower()
    assert start.headers["referrer-policy"] == "no-referrer"
    assert start.headers["cache-control"] == "no-store"

    back = await f.get(authorize)
    callback = back.headers["location"]
    assert callback.startswith(redirect_uri + "?")
    done = await f.get(callback)
    assert done.status_code == 302
    assert done.headers["location"] == f"{APP}/done?status=success&provider=acme"

    [token_request] = f.fakes.token_requests
    body = token_request["body"]
    assert body["redirect_uri"] == redirect_uri and body["grant_type"] == "authorization_code"
    verifier = body["code_verifier"]
    assert 43 <= len(verifier) <= 128
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert challenge.rstrip(b"=").decode() == q["code_challenge"][0]
    assert verifier not in authorize and verifier not in callback
    assert token_request["headers"]["authorization"].startswith("Basic ")
    assert "client_secret" not in body

    [integration] = await f.integrations(project)
    assert (integration.status, integration.health_status) == ("active", "healthy")
    async with f.app.state.sessions() as s:
        cred = await s.get(Credential, integration.id)
        secrets_ = store.open_credential(f.app.state.ring, integration, cred)
    assert secrets_.access_token in f.fakes.access_tokens
    assert secrets_.refresh_token in f.fakes.refresh_tokens
    assert cred.scopes == ["read", "write"] and cred.expires_at is not None
    assert [e.type for e in await f.events(project)] == ["integration.installed"]

    key = await f.key(project)
    listed = await f.browser.get(f"/v1/projects/{project}/integrations",
                                 headers={"X-API-Key": key})
    [item] = listed.json()["data"]
    assert (item["provider"], item["status"], item["health_status"]) == (
        "acme", "active", "healthy")


async def test_without_return_url_a_result_page_is_shown(f: Flow) -> None:
    f.fakes.auto_approve = True
    project = new_project()
    r = await f.get(await f.install_url(project, "acme", return_url=None))
    callback = (await f.get(r.headers["location"])).headers["location"]
    page = await f.get(callback)
    assert page.status_code == 200 and "Acme is connected" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text


# -- the callback of an approved install (also used by tests/security and others) ----------

async def _approved_callback(f: Flow, project: str) -> str:
    f.fakes.auto_approve = True
    start = await f.to_provider(project, "acme")
    return str((await f.get(start.headers["location"])).headers["location"])


async def test_connect_link_is_single_use(f: Flow) -> None:
    url = await f.install_url(new_project(), "acme")
    assert (await f.get(url)).status_code == 302
    second = await f.get(url)
    assert second.status_code == 410
    assert (await f.get(f"{PUBLIC}/connect/{'a' * 43}")).status_code == 410
    assert (await f.get(f"{PUBLIC}/connect/not%20a%20token")).status_code == 404


# -- Shopify: an input before the redirect, a signed callback -------------------------------

async def _shopify_form(f: Flow, project: str) -> tuple[str, httpx2.Response]:
    page = await f.get(await f.install_url(project, "shopify"))
    assert page.status_code == 200 and 'name=shop' in page.text
    action = page.text.split("action='", 1)[1].split("'", 1)[0]
    return action, page


async def test_shopify_install_end_to_end(f: Flow) -> None:
    f.fakes.auto_approve = True
    project = new_project()
    action, _ = await _shopify_form(f, project)
    r = await f.browser.post(action, data={"shop": "acme-store.myshopify.com"})
    assert r.status_code == 302
    authorize = r.headers["location"]
    assert authorize.startswith(f"{f.fake_url}/shopify/acme-store.myshopify.com/admin/oauth/")
    q = query(authorize)
    assert q["scope"] == ["read_orders,write_orders,read_customers"]
    assert "code_challenge" not in q
    callback = (await f.get(authorize)).headers["location"]
    assert set(query(callback)) >= {"code", "hmac", "shop", "state", "timestamp", "host"}
    done = await f.get(callback)
    assert done.headers["location"] == f"{APP}/done?status=success&provider=shopify"
    [token_request] = f.fakes.shopify_token_requests
    assert token_request["body"]["client_secret"] == CLIENT_SECRET
    assert token_request["body"]["expiring"] == "1"
    [integration] = await f.integrations(project)
    assert integration.provider_metadata == {"shop": "acme-store.myshopify.com"}
    # The form was used: posting it again starts nothing.
    again = await f.browser.post(action, data={"shop": "acme-store.myshopify.com"})
    assert again.status_code == 400


# -- Postmark: an API key verified before it is stored ------------------------------------

async def test_postmark_key_is_verified_before_it_is_stored(f: Flow) -> None:
    project = new_project()
    page = await f.get(await f.install_url(project, "postmark"))
    assert "type=password" in page.text
    action = page.text.split("action='", 1)[1].split("'", 1)[0]
    bad = "99999999-2222-3333-4444-555555555555"
    r = await f.browser.post(action, data={"server_token": bad})
    assert r.status_code == 422
    assert "Postmark rejected the credential" in r.text and "Server Token" in r.text
    assert bad not in r.text  # a secret is never echoed back into the page
    assert await f.integrations(project) == []
    r = await f.browser.post(action, data={"server_token": "not-a-uuid"})
    assert r.status_code == 422 and len(f.fakes.api_requests) == 1  # pattern, no request
    r = await f.browser.post(action, data={"server_token": POSTMARK_TOKEN})
    assert r.headers["location"] == f"{APP}/done?status=success&provider=postmark"
    assert f.fakes.api_requests[-1]["headers"]["x-postmark-server-token"] == POSTMARK_TOKEN
    [integration] = await f.integrations(project)
    assert integration.provider_metadata == {}
    async with f.app.state.sessions() as s:
        cred = await s.get(Credential, integration.id)
        opened = store.open_credential(f.app.state.ring, integration, cred)
    assert opened.fields == {"server_token": POSTMARK_TOKEN}


async def test_form_from_another_browser_is_refused(f: Flow) -> None:
    project = new_project()
    page = await f.get(await f.install_url(project, "postmark"))
    action = page.text.split("action='", 1)[1].split("'", 1)[0]
    f.browser.cookies = httpx2.Cookies()
    r = await f.browser.post(action, data={"server_token": POSTMARK_TOKEN})
    assert r.status_code == 400
    assert f.fakes.api_requests == [] and await f.integrations(project) == []


# -- connect sessions from the internal API ------------------------------------------------

async def _service_token(f: Flow) -> str:
    async with f.app.state.sessions() as s:
        return (await store.create_service_token(s, "main-api"))[1]


async def test_internal_connect_session_with_prefilled_shop(f: Flow) -> None:
    token = await _service_token(f)
    project = new_project()
    url = f"/internal/v1/projects/{project}/connect-sessions"
    body = {"provider": "shopify", "return_url": f"{APP}/x",
            "params": {"shop": "acme.myshopify.com"}}
    for headers in ({}, {"Authorization": "Bearer rst_nope"},
                    {"Authorization": f"Basic {token}"}):
        r = await f.browser.post(url, json=body, headers=headers)
        assert r.status_code == 401
    r = await f.browser.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert data["connect_url"].startswith(f"{PUBLIC}/connect/") and data["expires_at"]
    start = await f.get(data["connect_url"])
    assert start.status_code == 302
    assert "/shopify/acme.myshopify.com/admin/oauth/authorize" in start.headers["location"]
    for bad in ({"provider": "nope"}, {"provider": "shopify", "params": {"shop": "evil.com"}},
                {"provider": "postmark", "params": {"server_token": "x"}},
                {"provider": "shopify", "return_url": "https://evil.example/"},
                {"provider": "shopify", "extra": 1}):
        r = await f.browser.post(url, json=bad, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 422, bad


async def test_missing_client_credentials_is_a_clear_page(
        flow_settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState]) -> None:
    text = flow_settings.providers_file.read_text()  # type: ignore[union-attr]
    flow_settings.providers_file.write_text(  # type: ignore[union-attr]
        text.replace(f'client_id = "{CLIENT_ID}"\nclient_secret = "{CLIENT_SECRET}"\n\n'
                     '[providers.shopify]', "\n[providers.shopify]"))
    async for f in make_flow(flow_settings, ring, fakes):
        r = await f.get(await f.install_url(new_project(), "acme"))
        assert r.status_code == 409 and "BROKER_ACME_CLIENT_ID" in r.text


# -- the state store: Redis when configured, and 503 when it is down -----------------------

async def test_redis_down_answers_503_and_never_falls_back(
        flow_settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState]) -> None:
    from broker.state import RedisState

    down = RedisState("redis://127.0.0.1:1/0")
    async for f in make_flow(flow_settings, ring, fakes, state_store=down):
        project = new_project()
        r = await f.get(await f.install_url(project, "acme"))
        assert r.status_code == 503
        r = await f.get(f"{PUBLIC}/oauth/acme/callback?code=c&state={'s' * 43}")
        assert r.status_code == 503
        ready = await f.browser.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["state"] == "unreachable"
        assert f.fakes.authorize_requests == [] and f.fakes.token_requests == []


async def test_memory_state_take_is_single_use() -> None:
    memory = MemoryState()
    await memory.put("oauth", "t", {"a": 1}, 60)
    assert await memory.get("oauth", "t") == {"a": 1}
    assert await memory.take("oauth", "t") == {"a": 1}
    assert await memory.take("oauth", "t") is None


# -- webhook URLs ----------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "allowed"), [
    ("https://127.0.0.1/hook", False), ("https://localhost/hook", False),
    ("https://10.0.0.8/hook", False), ("https://192.168.1.1/x", False),
    ("https://169.254.169.254/latest/meta-data", False), ("https://[::1]/x", False),
    ("https://0.0.0.0/x", False), ("https://100.64.0.1/x", False),
    ("https://2130706433/x", False),  # 127.0.0.1 as a decimal integer
    ("http://93.184.215.14/hook", False), ("https://user:pw@93.184.215.14/x", False),
    ("https://93.184.215.14/hook", True), ("https://[2606:4700::1111]/hook", True),
])
def test_webhook_urls_must_be_public_https(url: str, allowed: bool) -> None:
    from broker.credentials_form import check_webhook_url

    assert (check_webhook_url(url, allow_private=False) is None) is allowed, url


async def test_webhook_form_refuses_internal_targets(f: Flow) -> None:
    project = new_project()
    page = await f.get(await f.install_url(project, "webhook"))
    action = page.text.split("action='", 1)[1].split("'", 1)[0]
    for url in ("https://127.0.0.1:9/x", "https://169.254.169.254/", "http://93.184.215.14/"):
        r = await f.browser.post(action, data={"url": url})
        assert r.status_code == 422, url
    assert await f.integrations(project) == []
    r = await f.browser.post(action, data={"url": "https://93.184.215.14/hooks/abc"})
    assert r.headers["location"] == f"{APP}/done?status=success&provider=webhook"
    [integration] = await f.integrations(project)
    assert integration.setup_type == "webhook" and integration.provider_metadata == {}


async def test_webhook_private_hosts_allowed_when_configured_for_tests(
        flow_settings: Settings, ring: KeyRing, fakes: tuple[str, FakeState]) -> None:
    settings = replace(flow_settings, allow_private_webhooks=True)
    async for f in make_flow(settings, ring, fakes):
        project = new_project()
        page = await f.get(await f.install_url(project, "webhook"))
        action = page.text.split("action='", 1)[1].split("'", 1)[0]
        r = await f.browser.post(action, data={"url": "https://127.0.0.1:9/x"})
        assert r.status_code == 302


# -- after_connect hooks -----------------------------------------------------------------

@pytest.mark.parametrize("outcome", ["confirmed", "refused"])
async def test_after_connect_hook_confirms_or_refuses_before_storage(f: Flow,
                                                                     outcome: str) -> None:
    from broker.spec import CallbackError, Connected, Hooks

    seen: list[Connected] = []

    async def hook(connected: Connected) -> dict[str, Any]:
        seen.append(connected)
        response = await connected.http.get("/oauth2/userinfo")
        if outcome == "refused":
            raise CallbackError("not yours")
        return {"user": response.json()["id"]}

    acme = f.app.state.providers["acme"]
    f.app.state.providers = {**f.app.state.providers, "acme": replace(
        acme, api_base_url=f.fake_url, hooks=Hooks(after_connect=hook))}
    project = new_project()
    callback = await _approved_callback(f, project)
    done = await f.get(callback)
    [connected] = seen
    assert connected.token.access_token in f.fakes.access_tokens
    [userinfo] = [r for r in f.fakes.api_requests if r["path"] == "/oauth2/userinfo"]
    assert userinfo["headers"]["authorization"] == f"Bearer {connected.token.access_token}"
    if outcome == "confirmed":
        assert query(done.headers["location"])["status"] == ["success"]
        [integration] = await f.integrations(project)
        assert integration.provider_metadata["user"] == "user-1"
    else:
        outcome_query = query(done.headers["location"])
        assert outcome_query["error"] == ["install_not_confirmed"]
        assert await f.integrations(project) == []
