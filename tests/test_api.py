"""The v1 Integrations API: shapes and semantics. (The auth matrix over the route table is in
tests/security/test_api_keys.py.) Runs against SQLite and PostgreSQL (the ``database``
fixture)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Harness, new_project

pytestmark = pytest.mark.anyio

READ_AND_WRITE = ("read", "integrations:write")


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
