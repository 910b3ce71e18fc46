"""``broker.client`` and ``broker integrations ...``.

The async client runs against the real app over ASGI; the sync client and the CLI (a real
``python -m broker`` subprocess) against the real app served by uvicorn on 127.0.0.1. All of
it on one SQLite database of this module's own (the client does not care about the backend,
and the storage tests already run on both).
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from asgi_lifespan import LifespanManager

from broker import apikeys, migrate, store
from broker.app import create_app
from broker.client import (
    UNSET,
    AsyncBrokerClient,
    BrokerClient,
    BrokerConnectionError,
    BrokerError,
)
from broker.crypto import KeyRing
from broker.db import create_engine, sessionmaker, utcnow
from broker.models import ServiceToken
from broker.settings import Settings
from tests.conftest import make_ring, new_project
from tests.fakes.server import RunningServer

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_URL = "https://broker.example.test"
RETURN_URL = "https://app.example.test/done"
WRITE = ("read", "integrations:write")


# -- setup -----------------------------------------------------------------------------------

@dataclass
class Broker:
    settings: Settings
    ring: KeyRing
    url: str  # the uvicorn server


@dataclass
class Seeded:
    project: str
    key: str  # read + integrations:write
    read_key: str
    token: str  # service token


async def _seed(sessions: Any, ring: KeyRing, installs: tuple[str, ...]) -> Seeded:
    project = new_project()
    public, token = apikeys.generate(apikeys.SERVICE_TOKEN_PREFIX)
    async with sessions() as s:
        await store.ensure_project(s, project)
        _, key = await store.create_api_key(s, project, WRITE)
        _, read_key = await store.create_api_key(s, project, ("read",))
        s.add(ServiceToken(id=f"{apikeys.SERVICE_TOKEN_ID_PREFIX}{public}", name="main-api",
                           created_at=utcnow(), token_hash=apikeys.digest(token)))
        for provider in installs:
            integration = await store.upsert_integration(
                s, project_id=project, provider=provider, setup_type="oauth",
                metadata={"shop": "acme.myshopify.com"} if provider == "shopify" else None)
            await store.write_credential(
                s, ring, integration, store.Secrets(access_token=f"at-{provider}",
                                                    refresh_token="rt-1"))
        await s.commit()
    return Seeded(project, key, read_key, token)


def seed(broker: Broker, *installs: str) -> Seeded:
    """A new project with keys, a service token and ``installs``, from this thread."""
    async def work() -> Seeded:
        engine = create_engine(broker.settings.database_url)
        try:
            return await _seed(sessionmaker(engine), broker.ring, installs)
        finally:
            await engine.dispose()
    return asyncio.run(work())


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    url = f"sqlite:///{tmp_path_factory.mktemp('client') / 'broker.db'}"
    migrate.upgrade(url)
    settings = Settings(database_url=url, public_url=PUBLIC_URL,
                        return_url_allowlist=("https://app.example.test",))
    ring = make_ring()
    with RunningServer(create_app(settings, ring=ring), lifespan="on") as server_url:
        yield Broker(settings, ring, server_url)


@dataclass
class Asgi:
    app: Any
    transport: httpx2.ASGITransport
    ring: KeyRing

    async def seed(self, *installs: str) -> Seeded:
        return await _seed(self.app.state.sessions, self.ring, installs)

    def client(self, seeded: Seeded, **kwargs: Any) -> AsyncBrokerClient:
        options: dict[str, Any] = {"api_key": seeded.key, "service_token": seeded.token,
                                   "project": seeded.project, **kwargs}
        return AsyncBrokerClient("http://broker.test", transport=self.transport, **options)


@pytest.fixture
async def asgi(broker: Broker) -> AsyncIterator[Asgi]:
    app = create_app(broker.settings, ring=broker.ring)
    async with LifespanManager(app) as manager:
        yield Asgi(app, httpx2.ASGITransport(app=manager.app), broker.ring)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the async client over ASGI --------------------------------------------------------------

@pytest.mark.anyio
async def test_async_client_v1_methods(asgi: Asgi) -> None:
    seeded = await asgi.seed("slack", "shopify")
    async with asgi.client(seeded) as client:
        listed = await client.list_integrations()
        assert sorted(i["provider"] for i in listed) == ["shopify", "slack"]
        assert all(i["status"] == "active" for i in listed)
        assert not any("token" in json.dumps(i) for i in listed)

        catalog = await client.catalog()
        by_slug = {e["provider"]: e for e in catalog}
        assert by_slug["slack"]["status"] == "active"
        assert by_slug["mailgun"]["status"] == "available"
        assert [e["provider"] for e in await client.catalog(q="shopify")] == ["shopify"]
        installed = await client.catalog(category="commerce", status="installed")
        assert [e["provider"] for e in installed] == ["shopify"]
        assert await client.catalog(category="no-such-category") == []

        entry = await client.catalog_entry("shopify")
        assert entry["provider"] == "shopify" and entry["status"] == "active"
        assert "refunds.create" in [a["name"] for a in entry["actions"]]

        url = await client.install_url("slack")
        assert url["provider"] == "slack" and url["setup_type"] == "oauth"
        assert url["install_url"].startswith(f"{PUBLIC_URL}/connect/")
        other = await client.install_url("mailgun", return_url=RETURN_URL)
        assert other["install_url"] != url["install_url"]

        changed = await client.update_lifecycle(
            "shopify", status="paused", display_name="Acme Store", sidebar_enabled=True,
            settings={"refunds_enabled": True}, allowed_actions=["orders.read"])
        assert (changed["status"], changed["display_name"], changed["sidebar_enabled"],
                changed["settings"], changed["allowed_actions"]) == (
            "paused", "Acme Store", True, {"refunds_enabled": True}, ["orders.read"])
        # Only the fields given are sent: clearing the name leaves everything else.
        cleared = await client.update_lifecycle("shopify", display_name=None)
        assert cleared["display_name"] is None
        assert (cleared["status"], cleared["sidebar_enabled"], cleared["allowed_actions"]) == (
            "paused", True, ["orders.read"])

        gone = await client.disconnect("slack", revoke=True)
        assert gone["status"] == "disconnected"
        # No OAuth client is configured for Slack here, so nothing is sent to Slack.
        assert gone["revoked"] == [] and gone["revocation_error"] == "provider_not_configured"
        plain = await client.disconnect("shopify")
        assert plain["status"] == "disconnected" and "revoked" not in plain


@pytest.mark.anyio
async def test_async_client_internal_methods(asgi: Asgi) -> None:
    seeded = await asgi.seed("slack", "shopify")
    async with asgi.client(seeded) as client:
        creds = await client.credentials(seeded.project, "slack")
        assert creds["access_token"] == "at-slack" and "refresh_token" not in creds

        session = await client.create_connect_session(seeded.project, "slack",
                                                      return_url=RETURN_URL)
        assert session["connect_url"].startswith(f"{PUBLIC_URL}/connect/")
        assert session["expires_at"].endswith("Z")
        fresh = new_project()  # connect sessions create the project
        prefilled = await client.create_connect_session(
            fresh, "shopify", params={"shop": "acme.myshopify.com"})
        assert prefilled["connect_url"] != session["connect_url"]

        changed = await client.internal_update_lifecycle(
            seeded.project, "shopify", acting_key_id="ak_main", display_name="Shop",
            allowed_actions=[])
        assert changed["display_name"] == "Shop" and changed["allowed_actions"] == []
        gone = await client.internal_disconnect(seeded.project, "slack", acting_key_id="ak_x")
        assert gone["status"] == "disconnected"

        events = await client.audit(seeded.project)
        assert [(e["type"], e["provider"], e["actor_key_id"]) for e in events[:2]] == [
            ("integration.disconnected", "slack", "ak_x"),
            ("integration.lifecycle.updated", "shopify", "ak_main")]
        first = await client.audit(seeded.project, limit=1)
        assert [e["id"] for e in first] == [events[0]["id"]]
        older = await client.audit(seeded.project, limit=1, before=first[0]["id"])
        assert [e["id"] for e in older] == [events[1]["id"]]


async def _fails(call: Any, status: int, code: str) -> BrokerError:
    with pytest.raises(BrokerError) as caught:
        await call
    err = caught.value
    assert (err.status, err.code) == (status, code), repr(err)
    assert err.message and err.request_id and err.request_id.startswith("req_"), repr(err)
    assert not isinstance(err, BrokerConnectionError)
    return err


@pytest.mark.anyio
async def test_async_client_errors_carry_status_code_and_request_id(asgi: Asgi) -> None:
    seeded = await asgi.seed("slack", "shopify")
    other = await asgi.seed()
    async with asgi.client(seeded) as client, \
            asgi.client(seeded, api_key="riq_not-a-key", service_token="rst_nope") as bad, \
            asgi.client(seeded, api_key=seeded.read_key) as reader, \
            asgi.client(seeded, project=other.project) as elsewhere:
        err = await _fails(bad.list_integrations(), 401, "unauthorized")
        assert str(err) == f"unauthorized: {err.message} (request {err.request_id})"
        await _fails(bad.credentials(seeded.project, "slack"), 401, "unauthorized")
        await _fails(reader.install_url("slack"), 403, "forbidden")
        await _fails(elsewhere.list_integrations(), 404, "not_found")
        await _fails(client.catalog_entry("no-such-provider"), 404, "not_found")
        await _fails(client.update_lifecycle("mailgun", status="paused"), 404, "not_found")
        await _fails(client.catalog(status="bogus"), 422, "invalid_status")
        await _fails(client.update_lifecycle("slack"), 422, "validation_error")
        await _fails(client.update_lifecycle("shopify", allowed_actions=["nope"]), 422,
                     "unknown_action")
        await _fails(client.install_url("slack", return_url="https://evil.test/"), 422,
                     "return_url_not_allowed")
        await client.update_lifecycle("shopify", status="paused")
        await _fails(client.credentials(seeded.project, "shopify"), 409,
                     "integration_paused")
        await client.disconnect("slack")
        await _fails(client.update_lifecycle("slack", status="active"), 409,
                     "reinstall_required")
        await _fails(client.audit(seeded.project, limit=0), 422, "validation_error")

    no_token = AsyncBrokerClient("http://broker.test", api_key=seeded.key,
                                 project=seeded.project, transport=asgi.transport)
    async with no_token:
        with pytest.raises(ValueError, match="service_token"):
            await no_token.credentials(seeded.project, "slack")
    no_key = AsyncBrokerClient("http://broker.test", service_token=seeded.token,
                               project=seeded.project, transport=asgi.transport)
    async with no_key:
        with pytest.raises(ValueError, match="api_key"):
            await no_key.list_integrations()
    no_project = AsyncBrokerClient("http://broker.test", api_key=seeded.key,
                                   transport=asgi.transport)
    async with no_project:
        with pytest.raises(ValueError, match="project"):
            await no_project.catalog()


# -- request building and response mapping (no broker) ---------------------------------------

class Recorder:
    def __init__(self, status: int = 200, body: bytes = b'{"data": {}}',
                 headers: dict[str, str] | None = None):
        self.requests: list[httpx2.Request] = []
        self.status, self.body, self.headers = status, body, headers or {}

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return httpx2.Response(self.status, content=self.body, headers=self.headers)

    def body_of(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content) if self.requests[i].content else None


def test_only_given_fields_are_sent_and_each_credential_to_its_own_api() -> None:
    rec = Recorder()
    with BrokerClient("http://b.test/", api_key="riq_k", service_token="rst_t",
                      project="prj a/b", transport=httpx2.MockTransport(rec)) as client:
        client.update_lifecycle("shopify", status="active")
        assert rec.body_of() == {"status": "active"}
        client.update_lifecycle("shopify", display_name=None)
        assert rec.body_of() == {"display_name": None}
        client.update_lifecycle("shopify", display_name=UNSET, sidebar_enabled=False,
                                settings={}, allowed_actions=())
        assert rec.body_of() == {"sidebar_enabled": False, "settings": {},
                                 "allowed_actions": []}
        v1 = rec.requests[-1]
        assert v1.url.raw_path == b"/v1/projects/prj%20a%2Fb/integrations/shopify/lifecycle"
        assert v1.headers["x-api-key"] == "riq_k" and "authorization" not in v1.headers

        client.install_url("slack")
        assert rec.requests[-1].content == b""
        client.disconnect("slack")
        assert rec.requests[-1].url.query == b""
        client.disconnect("slack", revoke=True)
        assert rec.requests[-1].url.query == b"revoke=true"
        client.catalog(q="a b", status="available")
        assert dict(rec.requests[-1].url.params) == {"q": "a b", "status": "available"}

        client.internal_disconnect("p", "slack", True, acting_key_id="ak_1")
        internal = rec.requests[-1]
        assert internal.url.path == "/internal/v1/projects/p/integrations/slack"
        assert internal.url.query == b"revoke=true"
        assert internal.headers["authorization"] == "Bearer rst_t"
        assert internal.headers["x-acting-key-id"] == "ak_1"
        assert "x-api-key" not in internal.headers
        client.create_connect_session("p", "slack")
        assert rec.body_of() == {"provider": "slack"}
        client.audit("p")
        assert dict(rec.requests[-1].url.params) == {"limit": "50"}
        with pytest.raises(TypeError):
            client.update_lifecycle("shopify", allowed_actions="orders.read")
        assert "riq_k" not in repr(client) and "rst_t" not in repr(client)


@pytest.mark.parametrize(("status", "body", "headers", "code"), [
    (502, b"<html>Bad Gateway</html>", {"x-request-id": "req_proxy"}, "http_502"),
    (200, b"<html>not the broker</html>", {}, "bad_response"),
    (200, b'{"items": []}', {}, "bad_response"),
])
def test_responses_that_are_not_the_envelope(status: int, body: bytes,
                                             headers: dict[str, str], code: str) -> None:
    rec = Recorder(status, body, headers)
    with BrokerClient("http://b.test", api_key="riq_k", project="p",
                      transport=httpx2.MockTransport(rec)) as client:
        with pytest.raises(BrokerError) as caught:
            client.list_integrations()
    assert (caught.value.status, caught.value.code) == (status, code)
    assert caught.value.request_id == headers.get("x-request-id")


@pytest.mark.anyio
async def test_unreachable_broker_and_timeouts() -> None:
    url = f"http://user:hunter2@127.0.0.1:{closed_port()}"
    with BrokerClient(url, api_key="riq_k", project="p") as client:
        with pytest.raises(BrokerConnectionError) as caught:
            client.list_integrations()
    assert (caught.value.status, caught.value.code) == (0, "unreachable")
    assert "hunter2" not in str(caught.value) and "127.0.0.1" in str(caught.value)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (type(copy), copy.status, str(copy)) == (
        BrokerConnectionError, 0, str(caught.value))

    def slow(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=request)

    async with AsyncBrokerClient(url, api_key="riq_k", project="p",
                                 transport=httpx2.MockTransport(slow)) as aclient:
        with pytest.raises(BrokerConnectionError) as caught:
            await aclient.catalog()
    assert caught.value.code == "timeout"


# -- the sync client against a running broker -------------------------------------------------

def test_sync_client_against_a_running_broker(broker: Broker) -> None:
    seeded = seed(broker, "slack", "shopify")
    with BrokerClient(broker.url, api_key=seeded.key, service_token=seeded.token,
                      project=seeded.project, timeout=5) as client:
        assert {i["provider"] for i in client.list_integrations()} == {"slack", "shopify"}
        assert [e["provider"] for e in client.catalog(q="shopify")] == ["shopify"]
        assert client.catalog_entry("slack")["status"] == "active"
        assert client.install_url("slack", return_url=RETURN_URL)["install_url"].startswith(
            f"{PUBLIC_URL}/connect/")
        changed = client.update_lifecycle("shopify", display_name="Acme", sidebar_enabled=True,
                                          settings={"a": 1}, allowed_actions=["orders.read"])
        assert (changed["display_name"], changed["settings"]) == ("Acme", {"a": 1})
        assert client.credentials(seeded.project, "shopify")["access_token"] == "at-shopify"
        assert "connect_url" in client.create_connect_session(seeded.project, "slack")
        assert client.internal_update_lifecycle(
            seeded.project, "shopify", acting_key_id="ak_main", status="paused")["status"] \
            == "paused"
        assert client.internal_disconnect(seeded.project, "shopify")["status"] == "disconnected"
        assert client.disconnect("slack", revoke=True)["revoked"] == []
        types = [e["type"] for e in client.audit(seeded.project, limit=10)]
        assert types.count("integration.disconnected") == 2
        with pytest.raises(BrokerError) as caught:
            client.catalog_entry("no-such-provider")
        assert caught.value.status == 404 and caught.value.request_id
    with BrokerClient(broker.url, api_key="riq_wrong", project=seeded.project) as bad:
        with pytest.raises(BrokerError) as caught:
            bad.list_integrations()
        assert (caught.value.status, caught.value.code) == (401, "unauthorized")


# -- the CLI ---------------------------------------------------------------------------------

def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), environ.get("PYTHONPATH")) if p)
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "broker", "integrations", *args],
                          env=environ, capture_output=True, text=True, timeout=60)


def show(r: subprocess.CompletedProcess[str]) -> str:
    return f"{r.args}\nexit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"


def many(*calls: tuple[tuple[str, ...], dict[str, str]]
         ) -> list[subprocess.CompletedProcess[str]]:
    """Run independent CLI calls a few at a time (each one is a Python start-up)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda c: run_cli(*c[0], **c[1]), calls))


def error_line(r: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert r.returncode == exit_code, show(r)
    assert r.stdout == "" and "Traceback" not in r.stderr, show(r)
    lines = r.stderr.splitlines()
    if lines and lines[0].startswith("usage: "):  # argparse: usage, then "PROG: error: ..."
        assert exit_code == 2 and re.match(r"broker integrations \S+: error: ", lines[-1]), \
            show(r)
        return lines[-1]
    assert len(lines) == 1 and lines[0].startswith("broker: error: "), show(r)
    return lines[0]


def test_cli_reads_and_install_url(broker: Broker) -> None:
    s = seed(broker, "slack", "shopify")
    env = {"BROKER_API_URL": broker.url, "BROKER_API_KEY": s.key, "BROKER_PROJECT": s.project}
    flags = ("--api-url", broker.url, "--api-key", s.key, "--project", s.project)
    table, as_json, catalog, catalog_json, entry, url, url_json = runs = many(
        (("list",), env),
        (("list", "--json", *flags), {}),
        (("catalog", "--category", "commerce", "--status", "installed"), env),
        (("catalog", "-q", "mail", "--json"), env),
        (("catalog", "shopify"), env),
        (("install-url", "slack"), env),
        (("install-url", "slack", "--return-url", RETURN_URL, "--json"), env),
    )
    for r in runs:
        assert r.returncode == 0 and r.stderr == "", show(r)
        assert s.key not in r.stdout, show(r)

    head, *rows = table.stdout.splitlines()
    assert head.split() == ["PROVIDER", "STATUS", "DISPLAY", "NAME", "HEALTH", "SIDEBAR",
                            "LAST", "SYNCED"]
    assert sorted(r.split()[:2] for r in rows) == [["shopify", "active"], ["slack", "active"]]
    assert sorted(i["provider"] for i in json.loads(as_json.stdout)) == ["shopify", "slack"]

    head, *rows = catalog.stdout.splitlines()
    assert head.startswith("PROVIDER") and [r.split()[0] for r in rows] == ["shopify"]
    found = {e["provider"] for e in json.loads(catalog_json.stdout)}
    assert "mailgun" in found and "mailchimp" in found and "slack" not in found
    assert "refunds.create" in entry.stdout and "commerce" in entry.stdout

    assert url.stdout.startswith(f"{PUBLIC_URL}/connect/") and "browser" in url.stdout
    assert json.loads(url_json.stdout)["install_url"].startswith(f"{PUBLIC_URL}/connect/")


def test_cli_lifecycle_and_disconnect(broker: Broker) -> None:
    s = seed(broker, "slack", "shopify")
    env = {"BROKER_API_URL": broker.url, "BROKER_API_KEY": s.key, "BROKER_PROJECT": s.project}
    r = run_cli("lifecycle", "shopify", "--status", "active", "--display-name", "Acme Store",
                "--sidebar", "true", "--settings", '{"refunds_enabled":true}',
                "--allowed-actions", "orders.read,refunds.create", "--json", **env)
    assert r.returncode == 0, show(r)
    doc = json.loads(r.stdout)
    assert (doc["status"], doc["display_name"], doc["sidebar_enabled"], doc["settings"],
            doc["allowed_actions"]) == ("active", "Acme Store", True,
                                        {"refunds_enabled": True},
                                        ["orders.read", "refunds.create"])

    cleared, gone, again = many(
        (("lifecycle", "shopify", "--clear-display-name", "--sidebar", "false"), env),
        (("disconnect", "slack", "--revoke"), env),
        (("disconnect", "shopify", "--json"), env))
    for r in (cleared, gone, again):
        assert r.returncode == 0 and r.stderr == "" and s.key not in r.stdout, show(r)
    assert "display_name:" in cleared.stdout and "sidebar_enabled: no" in cleared.stdout
    assert "Acme Store" not in cleared.stdout and "refunds_enabled" in cleared.stdout
    assert "slack" in gone.stdout and "disconnected" in gone.stdout
    assert "not revoked at the provider: provider_not_configured" in gone.stdout
    assert json.loads(again.stdout)["status"] == "disconnected"

    with BrokerClient(broker.url, api_key=s.key, project=s.project) as client:
        statuses = {i["provider"]: i["status"] for i in client.list_integrations()}
        assert statuses == {"slack": "disconnected", "shopify": "disconnected"}


def test_cli_exit_codes_through_the_entry_point(broker: Broker) -> None:
    s = seed(broker, "slack")
    env = {"BROKER_API_URL": broker.url, "BROKER_API_KEY": s.key, "BROKER_PROJECT": s.project}
    port = closed_port()
    not_found, forbidden, no_key, bad_json, refused, refused_flags = runs = many(
        (("catalog", "no-such-provider"), env),
        (("lifecycle", "slack", "--status", "paused"), {**env, "BROKER_API_KEY": s.read_key}),
        (("list",), {k: v for k, v in env.items() if k != "BROKER_API_KEY"}),
        (("lifecycle", "slack", "--settings", "[1]"), env),
        (("list",), {**env, "BROKER_API_URL": f"http://127.0.0.1:{port}"}),
        (("list", "--api-key", s.key, "--project", s.project,
          "--api-url", f"http://127.0.0.1:{port}"), {}),
    )
    for r in runs:
        assert s.key not in r.stdout + r.stderr and s.read_key not in r.stdout + r.stderr, \
            show(r)

    line = error_line(not_found, 1)
    assert re.fullmatch(r"broker: error: not_found: No provider .*\(request req_\w+\)", line)
    assert error_line(forbidden, 1).startswith("broker: error: forbidden: ")
    assert "BROKER_API_KEY" in error_line(no_key, 2)
    assert "--settings" in error_line(bad_json, 2)
    for r in (refused, refused_flags):
        assert error_line(r, 3).startswith("broker: error: unreachable: cannot reach the "
                                           f"broker at http://127.0.0.1:{port}: "), show(r)


@pytest.mark.parametrize(("argv", "env", "exit_code", "needle"), [
    (["list"], {"BROKER_API_KEY": "riq_definitely_wrong"}, 1, "unauthorized: "),
    (["list"], {"BROKER_PROJECT": "prj_someone_else"}, 1, "not_found: No such project."),
    (["install-url", "slack", "--return-url", "https://evil.test/"], {}, 1,
     "return_url_not_allowed: "),
    (["lifecycle", "slack", "--allowed-actions", "nope"], {}, 1, "unknown_action: "),
    (["list"], {"BROKER_PROJECT": ""}, 2, "BROKER_PROJECT"),
    (["list", "--api-url", "ftp://x"], {}, 2, "http(s)"),
    (["list", "--api-url", "http://u:hunter2@[::1"], {}, 2, "not a valid URL"),
    (["lifecycle", "slack", "--sidebar", "maybe"], {}, 2, "--sidebar"),
    (["lifecycle", "slack", "--display-name", "x", "--clear-display-name"], {}, 2,
     "not allowed with"),
    (["lifecycle", "slack"], {}, 2, "nothing to update"),
    (["catalog", "slack", "--status", "active"], {}, 2, "not both"),
    (["catalog", "--status", "bogus"], {}, 2, "--status"),
    (["list", "--timeout", "0"], {}, 2, "--timeout"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_cli_errors(broker: Broker, cli_project: Seeded, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str],
                    exit_code: int, needle: str) -> None:
    """The same ``main()``, in this process: exit code and one error line."""
    from broker.cli import main

    for name in [k for k in os.environ if k.startswith("BROKER_")]:
        monkeypatch.delenv(name)
    defaults = {"BROKER_API_URL": broker.url, "BROKER_API_KEY": cli_project.key,
                "BROKER_PROJECT": cli_project.project}
    for name, value in {**defaults, **env}.items():
        monkeypatch.setenv(name, value)
    try:
        code = main(["integrations", *argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    assert code == exit_code and out == "", err
    assert needle in err.splitlines()[-1] and "hunter2" not in err, err
    assert cli_project.key not in err and "riq_definitely_wrong" not in err
    if not err.startswith("usage: "):
        assert len(err.splitlines()) == 1 and err.startswith("broker: error: "), err


@pytest.fixture(scope="module")
def cli_project(broker: Broker) -> Seeded:
    return seed(broker, "slack")


def test_cli_help_documents_exit_codes() -> None:
    r = run_cli("list", "--help")
    assert r.returncode == 0, show(r)
    for needle in ("exit codes:", "0  success", "3  cannot reach the broker", "BROKER_API_KEY",
                   "--json"):
        assert needle in r.stdout, show(r)
