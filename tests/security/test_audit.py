"""Checklist D, audit (AU-01 ... AU-04): one complete row per change and none for refused
attempts, no change without its row, no secret in any row, and a security-log line for every
refused request."""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

from broker import apikeys, auth, store
from broker.app import create_app
from broker.crypto import KeyRing
from broker.db import utcnow
from broker.models import AuditEvent, Credential, Integration
from broker.settings import Settings
from tests.conftest import Database, Harness, new_project
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import CLIENT_SECRET, POSTMARK_TOKEN, FakeState
from tests.test_connect import Flow, _approved_callback, flow_settings, make_flow  # noqa: F401
from tests.test_credentials import installed, service_token

pytestmark = pytest.mark.anyio


async def _events(h: Harness | Flow, project: str) -> list[AuditEvent]:
    async with h.app.state.sessions() as s:
        return list(await s.scalars(select(AuditEvent).where(
            AuditEvent.project_id == project, AuditEvent.type.like("integration.%"))
            .order_by(AuditEvent.id)))


# -- AU-01 ---------------------------------------------------------------------------------

async def test_au_01_each_change_writes_one_row_with_who_when_and_from_to(
        harness: Harness) -> None:
    project = new_project()
    integration_id = await harness.install(project, "shopify")
    key = await harness.key(project, "read", "integrations:write")
    key_id = auth.claimed_key_id(key)
    base = f"/v1/projects/{project}/integrations/shopify"
    started = utcnow()
    r = await harness.client.patch(f"{base}/lifecycle", headers={
        "X-API-Key": key, "X-Request-Id": "req-au01-patch"},
        json={"status": "paused", "display_name": "Shop"})
    assert r.status_code == 200, r.text
    r = await harness.client.delete(base, headers={"X-API-Key": key,
                                                   "X-Request-Id": "req-au01-delete"})
    assert r.status_code == 200, r.text
    finished = utcnow()

    updated, disconnected = await _events(harness, project)
    for event in (updated, disconnected):
        assert (event.project_id, event.integration_id, event.provider, event.actor_key_id) == (
            project, integration_id, "shopify", key_id)
        assert event.created_at.utcoffset() == timedelta(0)
        assert started <= event.created_at <= finished
    assert (updated.type, updated.request_id) == ("integration.lifecycle.updated",
                                                  "req-au01-patch")
    assert updated.details == {"changes": {"status": {"from": "active", "to": "paused"},
                                           "display_name": {"from": None, "to": "Shop"}}}
    assert (disconnected.type, disconnected.request_id) == ("integration.disconnected",
                                                            "req-au01-delete")
    assert disconnected.details["from"] == {"status": "paused", "sidebar_enabled": True,
                                            "health_status": "healthy"}
    assert disconnected.details["to"] == {"status": "disconnected", "sidebar_enabled": False,
                                          "health_status": None}
    assert disconnected.details["credential_destroyed"] is True


async def test_au_01_the_internal_api_records_the_acting_key(harness: Harness) -> None:
    project = new_project()
    await harness.install(project, "slack")
    async with harness.app.state.sessions() as s:
        _, token = await store.create_service_token(s, "main-api")
    r = await harness.client.patch(
        f"/internal/v1/projects/{project}/integrations/slack/lifecycle",
        json={"sidebar_enabled": False},
        headers={"Authorization": f"Bearer {token}", "X-Acting-Key-Id": "ak_actingkey01"})
    assert r.status_code == 200, r.text
    [event] = await _events(harness, project)
    assert (event.actor_key_id, event.request_id) == ("ak_actingkey01",
                                                      r.headers["x-request-id"])
    listed = await harness.client.get(f"/internal/v1/projects/{project}/audit?limit=1",
                                      headers={"Authorization": f"Bearer {token}"})
    [shown] = listed.json()["data"]
    assert shown["created_at"].endswith("Z") and shown["actor_key_id"] == "ak_actingkey01"


async def test_au_01_refused_and_failed_attempts_write_no_row(harness: Harness) -> None:
    project, other = new_project(), new_project()
    await harness.install(project, "shopify")
    await harness.install(other, "shopify")
    writer = await harness.key(project, "read", "integrations:write")
    reader = await harness.key(project, "read")
    outsider = await harness.key(other, "read", "integrations:write")
    base = f"/v1/projects/{project}/integrations"
    attempts: list[tuple[str, str, str, Any, int]] = [
        ("PATCH", "/shopify/lifecycle", reader, {"status": "paused"}, 403),
        ("DELETE", "/shopify", reader, None, 403),
        ("PATCH", "/shopify/lifecycle", outsider, {"status": "paused"}, 404),
        ("DELETE", "/shopify", outsider, None, 404),
        ("PATCH", "/shopify/lifecycle", "riq_" + "A" * 50, {"status": "paused"}, 401),
        ("PATCH", "/shopify/lifecycle", writer, {"status": "deleted"}, 422),
        ("PATCH", "/shopify/lifecycle", writer, {"allowed_actions": ["nukes.launch"]}, 422),
        ("PATCH", "/mailgun/lifecycle", writer, {"status": "paused"}, 404),
        ("PATCH", "/shopify/lifecycle", writer, {"status": "active"}, 200),  # no change
    ]
    for method, suffix, key, body, expected in attempts:
        r = await harness.client.request(method, base + suffix, json=body,
                                         headers={"X-API-Key": key})
        assert r.status_code == expected, (method, suffix, r.text)
    assert await _events(harness, project) == []
    # A disconnected integration cannot be resumed without a reinstall: 409, no row either.
    assert (await harness.client.delete(f"{base}/shopify",
                                        headers={"X-API-Key": writer})).status_code == 200
    r = await harness.client.patch(f"{base}/shopify/lifecycle", json={"status": "active"},
                                   headers={"X-API-Key": writer})
    assert r.status_code == 409
    assert [e.type for e in await _events(harness, project)] == ["integration.disconnected"]


# -- AU-02 ---------------------------------------------------------------------------------

@pytest.fixture
async def on_own_postgres(own_postgres: Database, ring: KeyRing) -> AsyncIterator[Harness]:
    """A broker on a PostgreSQL database of this test's own (it gets a failing trigger)."""
    settings = Settings(database_url=own_postgres.url, public_url="https://broker.example.test",
                        return_url_allowlist=("https://app.example.test",))
    app = create_app(settings, ring=ring)
    async with LifespanManager(app) as manager:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app),
                                      base_url="http://broker.test") as client:
            yield Harness(app, client, ring, own_postgres)


async def _psql(db: Database, *statements: str) -> None:
    conn = await asyncpg.connect(db.url, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_au_02_no_change_commits_without_its_audit_row(on_own_postgres: Harness) -> None:
    h = on_own_postgres
    project = new_project()
    slack = await h.install(project, "slack")
    shopify = await h.install(project, "shopify")
    key = await h.key(project, "read", "integrations:write")
    async with h.app.state.sessions() as s:
        _, token = await store.create_service_token(s, "main-api")
    await _psql(h.database,
                "CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'audit store refuses writes'; END $$",
                "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events FOR EACH ROW "
                "EXECUTE FUNCTION audit_down()")
    v1 = {"X-API-Key": key}
    internal = {"Authorization": f"Bearer {token}", "X-Acting-Key-Id": "ak_ops"}
    for method, url, body, headers in [
        ("PATCH", f"/v1/projects/{project}/integrations/slack/lifecycle",
         {"status": "paused", "display_name": "Chat"}, v1),
        ("PATCH", f"/v1/projects/{project}/integrations/slack/lifecycle",
         {"status": "disconnected"}, v1),
        ("DELETE", f"/v1/projects/{project}/integrations/slack", None, v1),
        ("PATCH", f"/internal/v1/projects/{project}/integrations/shopify/lifecycle",
         {"sidebar_enabled": False}, internal),
        ("DELETE", f"/internal/v1/projects/{project}/integrations/shopify", None, internal),
    ]:
        r = await h.client.request(method, url, json=body, headers=headers)
        assert r.status_code >= 500, (method, url, r.status_code, r.text)
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
        assert "audit store refuses" not in r.text
    async with h.app.state.sessions() as s:
        for integration_id in (slack, shopify):
            row = await s.get(Integration, integration_id)
            assert (row.status, row.display_name, row.sidebar_enabled, row.health_status) == (
                "active", None, True, "healthy")
            assert await s.get(Credential, integration_id) is not None  # not wiped
    assert await _events(h, project) == []

    await _psql(h.database, "DROP TRIGGER audit_down ON audit_events")
    r = await h.client.delete(f"/v1/projects/{project}/integrations/slack", headers=v1)
    assert r.status_code == 200
    assert [e.type for e in await _events(h, project)] == ["integration.disconnected"]


# -- AU-03 ---------------------------------------------------------------------------------

@pytest.fixture
async def f(flow_settings: Settings, ring: KeyRing,  # noqa: F811
            fakes: tuple[str, FakeState]) -> AsyncIterator[Flow]:
    async for value in make_flow(flow_settings, ring, fakes):
        yield value


def _encodings(value: str) -> list[str]:
    raw = value.encode()
    return [value, raw.hex(), base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode().rstrip("=")]


async def test_au_03_no_secret_in_the_audit_table_after_every_flow(f: Flow) -> None:
    # Every code and token the fake provider mints carries this marker.
    f.fakes.mint_marker = "AU03MINTED"
    f.fakes.auto_approve = True
    project = new_project()
    key = await f.key(project)
    secrets = {CLIENT_SECRET, POSTMARK_TOKEN, key[4:], "SETTING-SENTINEL-AU03",
               "rt-seed", "at-seed", "99999999-2222-3333-4444-555555555555"}
    # Install through the browser (authorize, callback, code exchange, PKCE), and a refused one.
    install_url = await f.install_url(project, "acme")
    secrets.add(install_url.rsplit("/", 1)[1])
    start = await f.get(install_url)
    callback = str((await f.get(start.headers["location"])).headers["location"])
    assert (await f.get(callback)).status_code == 302
    refused = new_project()
    denied = await f.to_provider(refused, "acme")
    state = denied.headers["location"].split("state=", 1)[1].split("&", 1)[0]
    await f.get(f"https://broker.example.test/oauth/acme/callback?error=access_denied&"
                f"state={state}")
    # A key-based install: a rejected key, then the right one.
    page = await f.get(await f.install_url(project, "postmark"))
    action = page.text.split("action='", 1)[1].split("'", 1)[0]
    await f.browser.post(action, data={"server_token": "99999999-2222-3333-4444-555555555555"})
    await f.browser.post(action, data={"server_token": POSTMARK_TOKEN})
    # Lifecycle with a secret-looking setting, a refresh, disconnects with revocation.
    headers = {"X-API-Key": key}
    base = f"/v1/projects/{project}/integrations"
    r = await f.browser.patch(f"{base}/acme/lifecycle", headers=headers, json={
        "settings": {"webhook_secret": "SETTING-SENTINEL-AU03"}, "display_name": "Acme"})
    assert r.status_code == 200
    api_project, _ = await installed(f, expires_in=timedelta(seconds=-1))
    token = await service_token(f)
    secrets.add(token[4:])
    internal = {"Authorization": f"Bearer {token}", "X-Acting-Key-Id": "ak_ops"}
    api_base = f"/internal/v1/projects/{api_project}/integrations/acme"
    assert (await f.browser.get(f"{api_base}/credentials", headers=internal)).status_code == 200
    assert (await f.browser.delete(f"{api_base}?revoke=true", headers=internal)
            ).status_code == 200
    assert (await f.browser.delete(f"{base}/acme?revoke=true", headers=headers)
            ).status_code == 200
    assert (await f.browser.delete(f"{base}/postmark", headers=headers)).status_code == 200

    for request in f.fakes.authorize_requests:
        secrets.add(request["state"])
    for request in f.fakes.token_requests:
        secrets |= {request["body"].get("code_verifier", ""), request["body"].get("code", "")}
    secrets |= set(f.fakes.codes) | set(f.fakes.access_tokens) | set(f.fakes.refresh_tokens)
    secrets.discard("")
    assert len(secrets) > 12 and f.fakes.revoke_requests
    async with f.app.state.sessions() as s:
        rows = list(await s.scalars(select(AuditEvent).where(
            AuditEvent.project_id.in_((project, refused, api_project)))))
    types = {e.type for e in rows}
    assert {"integration.installed", "credential.refreshed", "integration.lifecycle.updated",
            "integration.disconnected"} <= types, types
    assert types & {"integration.install_failed", "integration.install_cancelled"}, types
    table = "\n".join(json.dumps({a.key: getattr(e, a.key) for a in AuditEvent.__mapper__
                                  .column_attrs}, default=str) for e in rows)
    assert project in table and api_project in table  # the scan reads this run's rows
    assert "AU03MINTED" not in table
    leaked = sorted(s for s in secrets for enc in _encodings(s) if enc in table)
    assert not leaked, leaked


# -- AU-04 ---------------------------------------------------------------------------------

def _security_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [{k: getattr(r, k, None) for k in ("outcome", "key_id", "route", "method",
                                               "project_id")}
            for r in caplog.records if r.name == "broker.security"]


async def test_au_04_refused_requests_are_security_log_events(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    project, other = new_project(), new_project()
    await harness.install(project, "slack")
    reader = await harness.key(project, "read")
    outsider = await harness.key(other, "read", "integrations:write")
    # A real key's public id with a wrong secret: the event names the key it claimed.
    body = reader[4:16] + "x" * 32
    forged = f"riq_{body}{apikeys._checksum(body)}"
    base = f"/v1/projects/{project}/integrations"
    lifecycle = "/v1/projects/{projectId}/integrations/{provider}/lifecycle"
    listing = "/v1/projects/{projectId}/integrations"
    assert (await harness.client.get(base, headers={"X-API-Key": "garbage"})).status_code == 401
    assert (await harness.client.get(base, headers={"X-API-Key": forged})).status_code == 401
    r = await harness.client.patch(f"{base}/slack/lifecycle", json={"status": "paused"},
                                   headers={"X-API-Key": reader})
    assert r.status_code == 403
    assert (await harness.client.get(base, headers={"X-API-Key": outsider})).status_code == 404
    async with harness.app.state.sessions() as s:
        _, token = await store.create_service_token(s, "main-api")
    r = await harness.client.get(f"/internal/v1/projects/{project}/audit",
                                 headers={"Authorization": f"Bearer {token[:-1]}x"})
    assert r.status_code == 401
    assert (await harness.client.get(base, headers={"X-API-Key": reader})).status_code == 200

    assert _security_events(caplog) == [
        {"outcome": "unauthorized", "key_id": None, "route": listing, "method": "GET",
         "project_id": None},
        {"outcome": "unauthorized", "key_id": auth.claimed_key_id(reader), "route": listing,
         "method": "GET", "project_id": None},
        {"outcome": "forbidden", "key_id": auth.claimed_key_id(reader), "route": lifecycle,
         "method": "PATCH", "project_id": project},
        {"outcome": "cross_tenant", "key_id": auth.claimed_key_id(outsider), "route": listing,
         "method": "GET", "project_id": other},
        {"outcome": "unauthorized", "key_id": None,
         "route": "/internal/v1/projects/{projectId}/audit", "method": "GET",
         "project_id": None},
    ]
    text = caplog.text + "".join(repr(vars(r)) for r in caplog.records)
    for secret in (reader[4:], reader[16:48], outsider[16:48], forged[16:48], token[4:]):
        assert secret not in text


async def test_au_04_the_application_role_cannot_rewrite_audit_rows(
        own_postgres: Database, ring: KeyRing) -> None:
    """deploy/postgres-app-role.sql, applied as psql would: the broker runs on the role it
    grants (installs, changes and their audit rows all work), and that role's UPDATE,
    DELETE and TRUNCATE of audit rows are refused by PostgreSQL itself."""
    role = f"broker_app_{secrets.token_hex(4)}"
    script = (Path(__file__).parents[2] / "deploy" / "postgres-app-role.sql").read_text()
    statements = [s.strip().replace(':"app_role"', f'"{role}"')
                  for s in "\n".join(line for line in script.splitlines()
                                     if not line.startswith("--")).split(";") if s.strip()]
    await _psql(own_postgres, f'CREATE ROLE "{role}" LOGIN', *statements)
    app_url = own_postgres.url.replace("://postgres@", f"://{role}@", 1)
    assert app_url != own_postgres.url
    try:
        settings = Settings(database_url=app_url, public_url="https://broker.example.test")
        app = create_app(settings, ring=ring)
        async with LifespanManager(app) as manager, httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=manager.app),
                base_url="http://broker.test") as client:
            h = Harness(app, client, ring, own_postgres)
            assert (await client.get("/readyz")).status_code == 200
            project = new_project()
            await h.install(project, "slack")
            key = await h.key(project, "read", "integrations:write")
            base = f"/v1/projects/{project}/integrations/slack"
            r = await client.patch(f"{base}/lifecycle", headers={"X-API-Key": key},
                                   json={"display_name": "Chat"})
            assert r.status_code == 200, r.text
            assert (await client.delete(base, headers={"X-API-Key": key})).status_code == 200
            assert [e.type for e in await _events(h, project)] == [
                "integration.lifecycle.updated", "integration.disconnected"]
        conn = await asyncpg.connect(app_url, timeout=5)
        try:
            for statement in ("UPDATE audit_events SET details = '{}'",
                              "DELETE FROM audit_events",
                              "TRUNCATE audit_events",
                              "UPDATE alembic_version SET version_num = 'x'"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
            assert await conn.fetchval("SELECT count(*) FROM audit_events") >= 2
        finally:
            await conn.close()
    finally:
        await _psql(own_postgres, f'DROP OWNED BY "{role}"')
        admin = await asyncpg.connect(own_postgres.url, timeout=5)
        try:
            await admin.execute(f'DROP ROLE "{role}"')
        finally:
            await admin.close()
