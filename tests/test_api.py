"""The v1 Integrations API: the auth matrix over the route table, shapes, and semantics.
Runs against SQLite and PostgreSQL (the ``database`` fixture)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from broker import apikeys
from broker.app import routes
from broker.auth import route_scope
from broker.db import utcnow
from broker.models import ApiKey, AuditEvent, Credential, Integration
from tests.conftest import Harness, new_project

pytestmark = pytest.mark.anyio

V1_ROUTES = [(r.path, sorted(r.methods - {"HEAD"})[0], route_scope(r.endpoint))
             for r in routes() if r.path.startswith("/v1/")]
READ_AND_WRITE = ("read", "integrations:write")


def test_every_v1_route_declares_a_scope() -> None:
    v1 = [r for r in routes() if r.path.startswith("/v1/")]
    assert len(v1) == 6
    assert all(route_scope(r.endpoint) in ("read", "integrations:write") for r in v1)


def _call_args(path: str, method: str, project: str) -> dict[str, Any]:
    url = path.replace("{projectId}", project).replace("{provider}", "slack")
    body = {"display_name": "Team chat"} if method == "PATCH" else None
    return {"method": method, "url": url, "json": body}


async def _state(h: Harness, project: str) -> tuple[Any, int, int]:
    async with h.app.state.sessions() as s:
        row = (await s.scalars(select(Integration).where(
            Integration.project_id == project))).one()
        snapshot = (row.status, row.display_name, row.sidebar_enabled, row.health_status,
                    row.settings, row.allowed_actions, row.updated_at)
        creds = await s.scalar(select(func.count()).select_from(Credential)
                               .where(Credential.integration_id == row.id))
        audits = await s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.project_id == project, AuditEvent.type.like("integration.%")))
        return snapshot, creds, audits


@pytest.mark.parametrize(("path", "method", "scope"), V1_ROUTES)
async def test_scopes_allow_and_forbid(harness: Harness, path: str, method: str,
                                       scope: str) -> None:
    for key_scopes in (("read",), ("integrations:write",), READ_AND_WRITE):
        project = new_project()
        await harness.install(project, "slack")
        key = await harness.key(project, *key_scopes)
        before = await _state(harness, project)
        r = await harness.client.request(**_call_args(path, method, project),
                                         headers={"X-API-Key": key})
        if scope in key_scopes:
            assert r.status_code == 200, (key_scopes, r.text)
            assert "data" in r.json()
        else:
            assert r.status_code == 403, (key_scopes, r.text)
            assert r.json()["error"]["code"] == "forbidden"
            assert await _state(harness, project) == before


@pytest.mark.parametrize(("path", "method", "scope"), V1_ROUTES)
async def test_authentication_failures_share_one_body(harness: Harness, path: str,
                                                      method: str, scope: str) -> None:
    project = new_project()
    await harness.install(project, "slack")
    good = await harness.key(project, *READ_AND_WRITE)
    revoked = await harness.key(project, *READ_AND_WRITE)
    async with harness.app.state.sessions() as s:
        row = await s.get(ApiKey, "ak_" + apikeys.parse("riq_", revoked))
        row.revoked_at = utcnow()
        await s.commit()
    # A real key id with another secret and a valid checksum: only the hash can tell.
    body = good[4:16] + "x" * 32
    forged = f"riq_{body}{apikeys._checksum(body)}"
    assert apikeys.parse("riq_", forged) == good[4:16]
    bad_checksum = good[:20] + ("A" if good[20] != "A" else "B") + good[21:]
    before = await _state(harness, project)
    bodies = []
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "riq_nope"},
                    {"X-API-Key": forged},
                    {"X-API-Key": bad_checksum}, {"X-API-Key": revoked},
                    {"X-API-Key": good.replace("riq_", "RIQ_")},
                    {"Authorization": f"Bearer {good}"}):
        r = await harness.client.request(**_call_args(path, method, project), headers=headers)
        assert r.status_code == 401, (headers, r.text)
        error = r.json()["error"]
        assert error["request_id"] == r.headers["x-request-id"]
        bodies.append((error["code"], error["message"], tuple(sorted(r.json()))))
    assert len(set(bodies)) == 1
    assert await _state(harness, project) == before


@pytest.mark.parametrize(("path", "method", "scope"), V1_ROUTES)
async def test_another_projects_key_sees_nothing(harness: Harness, path: str, method: str,
                                                 scope: str) -> None:
    victim, attacker = new_project(), new_project()
    await harness.install(victim, "slack", metadata={"team.id": "T-VICTIM"})
    await harness.install(attacker, "shopify")
    key = await harness.key(attacker, *READ_AND_WRITE)
    before = await _state(harness, victim)
    r = await harness.client.request(**_call_args(path, method, victim),
                                     headers={"X-API-Key": key})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert "T-VICTIM" not in r.text and victim not in r.json()["error"]["message"]
    # Same answer as for a project that does not exist at all.
    r2 = await harness.client.request(**_call_args(path, method, "prj_nonexistent"),
                                      headers={"X-API-Key": key})
    assert (r2.status_code, r2.json()["error"]["message"]) == (404, r.json()["error"]["message"])
    assert await _state(harness, victim) == before


async def test_list_and_catalog_never_show_other_projects(harness: Harness) -> None:
    a, b = new_project(), new_project()
    await harness.install(a, "slack", metadata={"team.id": "T-A"})
    await harness.install(b, "mailgun", fields={"api_key": "key-b"}, access_token=None,
                          refresh_token=None)
    key = await harness.key(a, "read")
    listed = (await harness.client.get(f"/v1/projects/{a}/integrations",
                                       headers={"X-API-Key": key})).json()["data"]
    assert [i["provider"] for i in listed] == ["slack"]
    catalog = (await harness.client.get(f"/v1/projects/{a}/integrations/catalog",
                                        headers={"X-API-Key": key})).json()["data"]
    by_slug = {e["provider"]: e for e in catalog}
    assert by_slug["mailgun"]["status"] == "available"
    assert by_slug["slack"]["status"] == "active"


async def test_list_shape_has_every_field_and_no_secret(harness: Harness) -> None:
    project = new_project()
    await harness.install(project, "slack", access_token="xoxb-SENTINEL-AT",
                          refresh_token="xoxe-SENTINEL-RT", metadata={"team": "T1"})
    key = await harness.key(project, "read")
    r = await harness.client.get(f"/v1/projects/{project}/integrations",
                                 headers={"X-API-Key": key})
    item = r.json()["data"][0]
    assert set(item) == {"id", "provider", "status", "display_name", "setup_type",
                         "health_status", "sidebar_enabled", "last_synced_at", "error_message",
                         "created_at", "updated_at", "settings", "allowed_actions", "metadata"}
    assert item["id"].startswith("int_")
    assert (item["status"], item["setup_type"], item["health_status"]) == (
        "active", "oauth", "healthy")
    assert item["created_at"].endswith("Z") and item["metadata"] == {"team": "T1"}
    assert "SENTINEL" not in r.text


async def test_catalog_filters(harness: Harness) -> None:
    project = new_project()
    key = await harness.key(project, *READ_AND_WRITE)
    await harness.install(project, "slack")
    await harness.install(project, "shopify")
    await harness.install(project, "postmark", access_token=None, refresh_token=None,
                          fields={"server_token": "x"})
    headers = {"X-API-Key": key}
    base = f"/v1/projects/{project}/integrations"
    await harness.client.patch(f"{base}/shopify/lifecycle", json={"status": "paused"},
                               headers=headers)
    await harness.client.delete(f"{base}/postmark", headers=headers)

    async def slugs(**params: str) -> list[str]:
        r = await harness.client.get(f"{base}/catalog", params=params, headers=headers)
        assert r.status_code == 200, r.text
        return [e["provider"] for e in r.json()["data"]]

    everything = sorted(harness.app.state.providers)
    assert await slugs() == everything
    assert await slugs(status="available") == [
        p for p in everything if p not in ("shopify", "slack")]
    assert await slugs(status="installed") == ["shopify", "slack"]
    assert await slugs(status="active") == ["slack"]
    assert await slugs(status="paused") == ["shopify"]
    assert await slugs(status="disconnected") == ["postmark"]
    email = sorted(p.slug for p in harness.app.state.providers.values()
                   if p.category == "email")
    assert {"mailgun", "postmark"} <= set(email)
    assert await slugs(category="email") == email
    assert await slugs(category="EMAIL") == email
    assert await slugs(category="nope") == []
    assert "shopify" in await slugs(q="SHOP") and "slack" not in await slugs(q="SHOP")
    assert "postmark" in await slugs(q="transactional")  # description text
    assert {"mailgun", "postmark"} <= set(await slugs(q="mail", status="available"))
    assert "shopify" not in await slugs(q="mail")
    assert "shopify" in await slugs(q="commerce")  # category text
    for entry_slug in await slugs(q="commerce"):
        provider = harness.app.state.providers[entry_slug]
        assert "commerce" in " ".join((provider.slug, provider.name, provider.category,
                                       provider.description)).lower()
    for bad in ({"status": "bogus"}, {"q": "x" * 101}, {"sort": "name"}):
        r = await harness.client.get(f"{base}/catalog", params=bad, headers=headers)
        assert r.status_code == 422, bad


async def test_catalog_entry(harness: Harness) -> None:
    project = new_project()
    key = await harness.key(project, "read")
    base = f"/v1/projects/{project}/integrations/catalog"
    r = await harness.client.get(f"{base}/shopify", headers={"X-API-Key": key})
    entry = r.json()["data"]
    assert (entry["provider"], entry["name"], entry["category"], entry["setup_type"],
            entry["status"]) == ("shopify", "Shopify", "commerce", "oauth", "available")
    assert {a["name"] for a in entry["actions"]} == {"orders.read", "orders.cancel",
                                                     "refunds.create"}
    assert entry["fields"][0]["name"] == "shop"
    r = await harness.client.get(f"{base}/nope", headers={"X-API-Key": key})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_install_url_standalone_is_a_single_use_connect_session(harness: Harness) -> None:
    project = new_project()
    key = await harness.key(project, "integrations:write")
    r = await harness.client.post(f"/v1/projects/{project}/integrations/postmark/install-url",
                                  headers={"X-API-Key": key})
    data = r.json()["data"]
    assert set(data) == {"provider", "install_url", "setup_type", "message"}
    assert (data["provider"], data["setup_type"]) == ("postmark", "api_key")
    assert data["install_url"].startswith("https://broker.example.test/connect/")
    token = data["install_url"].rsplit("/", 1)[1]
    from broker.connect import token_hash
    from broker.models import ConnectSession
    async with harness.app.state.sessions() as s:
        row = await s.get(ConnectSession, token_hash(token))
        assert row is not None and (row.project_id, row.provider) == (project, "postmark")
        assert token.encode() not in repr(row.__dict__).encode()
    again = (await harness.client.post(
        f"/v1/projects/{project}/integrations/postmark/install-url",
        headers={"X-API-Key": key})).json()["data"]["install_url"]
    assert again != data["install_url"]


async def test_install_url_return_url_must_be_allow_listed(harness: Harness) -> None:
    project = new_project()
    key = await harness.key(project, "integrations:write")
    url = f"/v1/projects/{project}/integrations/slack/install-url"
    ok = await harness.client.post(url, json={"return_url": "https://app.example.test/done"},
                                   headers={"X-API-Key": key})
    assert ok.status_code == 200
    for bad in ({"return_url": "https://evil.example/done"},
                {"return_url": "javascript:alert(1)"},
                {"return_url": "https://app.example.test.evil.example/"},
                {"return_url": 5}, {"other": 1}, ["x"]):
        r = await harness.client.post(url, json=bad, headers={"X-API-Key": key})
        assert r.status_code == 422, bad


async def test_install_url_with_dashboard(harness: Harness, settings: Any) -> None:
    import dataclasses

    harness.app.state.settings = dataclasses.replace(
        settings, dashboard_url="https://dash.example.test")
    project = new_project()
    key = await harness.key(project, "integrations:write")
    r = await harness.client.post(f"/v1/projects/{project}/integrations/slack/install-url",
                                  headers={"X-API-Key": key})
    assert r.json()["data"] == {
        "provider": "slack", "setup_type": "oauth",
        "install_url": f"https://dash.example.test/projects/{project}/integrations/slack",
        "message": "Open the URL above in a browser to complete installation."}


async def test_request_id_is_echoed_or_made(harness: Harness) -> None:
    r = await harness.client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await harness.client.get("/healthz", headers={"X-Request-Id": b"bad id \xe9"})
    assert r.headers["x-request-id"].startswith("req_")
    r = await harness.client.get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    r = await harness.client.put("/healthz")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_readyz(harness: Harness) -> None:
    r = await harness.client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


async def test_readyz_reports_a_schema_behind_the_code(harness: Harness) -> None:
    harness.app.state.schema_head = "9999"
    r = await harness.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["schema"].endswith("expected 9999")
