"""Checklist C, API authentication and tenancy (AK-01 ... AK-09): project API keys are
hashed, checked without an oracle, required on every operation, scoped, confined to their
project, revoked and expired at once, and never echoed. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select, update

from broker import apikeys, auth, limits, store
from broker.app import create_app, routes
from broker.auth import route_scope
from broker.db import Base, utcnow
from broker.models import ApiKey, AuditEvent, Credential, Integration, ServiceToken
from broker.settings import ClientCredentials, Settings
from tests.conftest import Database, Harness, new_project

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
V1_ROUTES = [(r.path, sorted(r.methods - {"HEAD"})[0], route_scope(r.endpoint))
             for r in routes() if r.path.startswith("/v1/")]
READ_AND_WRITE = ("read", "integrations:write")
# Reached without a key: the browser side of an install (the single-use connect link, its
# form, the OAuth callback) and the operational probes, which serve no tenant data.
UNAUTHENTICATED = {"/connect/{session}", "/connect/forms/{form}", "/oauth/{provider}/callback",
                   "/openapi.json", "/healthz", "/readyz", "/metrics"}


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


async def _key_row(h: Harness, secret: str) -> ApiKey:
    async with h.app.state.sessions() as s:
        row = await s.get(ApiKey, auth.claimed_key_id(secret))
        assert row is not None
        return row


async def _set_key(h: Harness, secret: str, **values: Any) -> None:
    async with h.app.state.sessions() as s:
        await s.execute(update(ApiKey).where(ApiKey.id == auth.claimed_key_id(secret))
                        .values(**values))
        await s.commit()


async def _every_stored_value(h: Harness) -> bytes:
    """Every value of every row of every table, as bytes: what a database reader sees."""
    out = bytearray()
    async with h.app.state.sessions() as s:
        for table in Base.metadata.sorted_tables:
            for row in (await s.execute(select(table))).all():
                for value in row:
                    out += value if isinstance(value, bytes) else repr(value).encode()
                    out += b"\n"
    return bytes(out)


def _encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]


def cli(database: Database, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """The ``broker`` command for real, against the test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(PYTHONPATH=str(ROOT), BROKER_DATABASE_URL=database.url)
    r = subprocess.run([sys.executable, "-m", "broker", *args], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode == 0) == ok, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture
async def second_worker(settings: Settings, harness: Harness) -> AsyncIterator[httpx2.AsyncClient]:
    """Another broker process in all but name: its own app, runtime and caches, on the
    harness's database."""
    app = create_app(settings, ring=harness.ring)
    async with LifespanManager(app) as manager:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app),
                                      base_url="http://broker.test") as client:
            yield client


# -- AK-01 ---------------------------------------------------------------------------------

async def test_ak_01_only_a_digest_is_stored_and_the_secret_is_never_shown_again(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    project = new_project()
    await harness.install(project, "slack")
    async with harness.app.state.sessions() as s:
        key_id, secret = await store.create_api_key(s, project, READ_AND_WRITE, "ci")
    # Typed prefix, public id, secret part, checksum: scanners find it, typos fail early.
    assert secret.startswith("riq_") and len(secret) == 4 + 12 + 32 + 6
    assert key_id == auth.claimed_key_id(secret) and key_id.startswith("ak_")
    assert apikeys.parse("riq_", secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert apikeys.SECRET_LEN * math.log2(len(apikeys.ALPHABET)) >= 128
    row = await _key_row(harness, secret)
    assert row.key_hash == hashlib.sha256(secret.encode()).digest()

    headers = {"X-API-Key": secret}
    base = f"/v1/projects/{project}/integrations"
    responses = [await harness.client.get(base, headers=headers),
                 await harness.client.get(f"{base}/catalog", headers=headers),
                 await harness.client.patch(f"{base}/slack/lifecycle", headers=headers,
                                            json={"display_name": "Chat"}),
                 await harness.client.delete(f"{base}/slack", headers=headers)]
    assert [r.status_code for r in responses] == [200] * 4
    seen = b"".join(r.content + repr(r.headers).encode() for r in responses)
    seen += caplog.text.encode() + await _every_stored_value(harness)
    assert key_id.encode() in seen  # the public id may appear (audit rows name it) ...
    for part in (secret, secret[4:], secret[16:48]):  # ... the secret part never
        for encoded in _encodings(part):
            assert encoded not in seen, part


async def test_ak_01_the_cli_prints_the_key_once(harness: Harness) -> None:
    project = new_project()
    created = json.loads(cli(harness.database, "api-keys", "create", "--project", project,
                             "--json").stdout)
    assert created["key"].startswith("riq_")
    listed = cli(harness.database, "api-keys", "list", "--project", project, "--json").stdout
    assert created["id"] in listed and created["key"][16:48] not in listed
    row = await _key_row(harness, created["key"])
    assert row.key_hash == apikeys.digest(created["key"])


# -- AK-02 ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "method", "scope"), V1_ROUTES)
async def test_ak_02_unknown_wrong_revoked_and_expired_keys_share_one_401(
        harness: Harness, path: str, method: str, scope: str) -> None:
    project = new_project()
    await harness.install(project, "slack")
    good = await harness.key(project, *READ_AND_WRITE)
    revoked = await harness.key(project, *READ_AND_WRITE)
    await _set_key(harness, revoked, revoked_at=utcnow())
    expired = await harness.key(project, *READ_AND_WRITE)
    await _set_key(harness, expired, expires_at=utcnow() - timedelta(seconds=1))
    # A real key id with another secret and a valid checksum: only the hash can tell.
    body = good[4:16] + "x" * 32
    forged = f"riq_{body}{apikeys._checksum(body)}"
    assert apikeys.parse("riq_", forged) == good[4:16]
    unknown_body = "U" * 12 + good[16:48]
    unknown = f"riq_{unknown_body}{apikeys._checksum(unknown_body)}"
    bad_checksum = good[:20] + ("A" if good[20] != "A" else "B") + good[21:]
    before = await _state(harness, project)
    bodies = []
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "riq_nope"},
                    {"X-API-Key": unknown}, {"X-API-Key": forged},
                    {"X-API-Key": bad_checksum}, {"X-API-Key": revoked},
                    {"X-API-Key": expired},
                    {"X-API-Key": good.replace("riq_", "RIQ_")},
                    {"Authorization": f"Bearer {good}"}):
        r = await harness.client.request(**_call_args(path, method, project), headers=headers)
        assert r.status_code == 401, (headers, r.text)
        error = r.json()["error"]
        assert error["request_id"] == r.headers["x-request-id"]
        bodies.append((error["code"], error["message"], tuple(sorted(r.json())),
                       r.headers.get("content-type")))
    assert len(set(bodies)) == 1
    assert await _state(harness, project) == before
    r = await harness.client.request(**_call_args(path, method, project),
                                     headers={"X-API-Key": good})
    assert r.status_code == 200, r.text


# -- AK-03 ---------------------------------------------------------------------------------

def test_ak_03_every_route_but_the_browser_and_probes_requires_a_credential() -> None:
    open_routes = {r.path for r in routes() if route_scope(r.endpoint) is None}
    assert open_routes == UNAUTHENTICATED
    for r in routes():
        if r.path.startswith("/internal/"):
            assert route_scope(r.endpoint) == "service", r.path
        elif r.path.startswith("/v1/"):
            assert route_scope(r.endpoint) in apikeys.SCOPES, r.path


async def test_ak_03_no_operation_answers_without_a_valid_credential(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "AUTH_FAILURES", 10_000)  # 77 failures from one address
    project = new_project()
    await harness.install(project, "slack")
    good = await harness.key(project, *READ_AND_WRITE)
    async with harness.app.state.sessions() as s:
        _, token = await store.create_service_token(s, "main-api")
    before = await _state(harness, project)
    checked = 0
    for route in routes():
        if route_scope(route.endpoint) is None:
            continue
        for method in sorted(route.methods - {"HEAD"}):
            args = _call_args(route.path, method, project)
            if route.path.endswith("/connect-sessions"):
                args["json"] = {"provider": "slack"}
            # No credential; malformed ones; the other API's credential.
            for headers in ({}, {"X-API-Key": "riq_" + "A" * 50},
                            {"X-API-Key": "not-a-key"},
                            {"Authorization": "Bearer rst_" + "A" * 50},
                            {"Authorization": "Basic cm9vdDpyb290"},
                            {"Authorization": f"Bearer {good}"},
                            {"X-API-Key": token}):
                r = await harness.client.request(**args, headers=headers)
                assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized"), (
                    method, route.path, headers)
                checked += 1
    assert checked == 7 * 11
    assert await _state(harness, project) == before


# -- AK-04 ---------------------------------------------------------------------------------

def test_ak_04_every_v1_route_declares_a_scope() -> None:
    v1 = [r for r in routes() if r.path.startswith("/v1/")]
    assert len(v1) == 6
    assert all(route_scope(r.endpoint) in ("read", "integrations:write") for r in v1)
    reads = {(p, m) for p, m, s in V1_ROUTES if s == "read"}
    assert {m for _, m in reads} == {"GET"}  # only reads may run on a read key


@pytest.mark.parametrize(("path", "method", "scope"), V1_ROUTES)
async def test_ak_04_scopes_allow_and_forbid(harness: Harness, path: str, method: str,
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


# -- AK-05 ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "method", "scope"), V1_ROUTES)
async def test_ak_05_another_projects_key_sees_nothing(harness: Harness, path: str,
                                                       method: str, scope: str) -> None:
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


async def test_ak_05_list_and_catalog_never_show_other_projects(harness: Harness) -> None:
    a, b = new_project(), new_project()
    await harness.install(a, "slack", metadata={"team.id": "T-A"})
    await harness.install(b, "mailgun", fields={"api_key": "key-b"}, access_token=None,
                          refresh_token=None)
    await harness.install(b, "slack", metadata={"team.id": "T-B"})
    key = await harness.key(a, "read")
    listed = await harness.client.get(f"/v1/projects/{a}/integrations",
                                      headers={"X-API-Key": key})
    assert [i["provider"] for i in listed.json()["data"]] == ["slack"]
    assert "T-B" not in listed.text
    catalog = (await harness.client.get(f"/v1/projects/{a}/integrations/catalog",
                                        headers={"X-API-Key": key})).json()["data"]
    by_slug = {e["provider"]: e for e in catalog}
    assert by_slug["mailgun"]["status"] == "available"
    assert by_slug["slack"]["status"] == "active"


# -- AK-06 ---------------------------------------------------------------------------------

async def test_ak_06_the_tenant_comes_only_from_the_key(harness: Harness) -> None:
    mine, theirs = new_project(), new_project()
    await harness.install(theirs, "slack")
    await harness.install(mine, "shopify")
    key = await harness.key(mine, "read", "integrations:write")
    base = f"/v1/projects/{mine}/integrations"
    for headers in ({"X-Project-Id": theirs}, {"X-Project": theirs}):
        r = await harness.client.get(base, headers={"X-API-Key": key, **headers})
        assert [i["provider"] for i in r.json()["data"]] == ["shopify"]
    # In the query or the body: refused, never honoured.
    r = await harness.client.get(f"{base}?project_id={theirs}", headers={"X-API-Key": key})
    assert r.status_code == 422
    r = await harness.client.patch(f"{base}/shopify/lifecycle",
                                   json={"project_id": theirs, "status": "paused"},
                                   headers={"X-API-Key": key})
    assert r.status_code == 422
    r = await harness.client.post(f"{base}/slack/install-url", json={"project_id": theirs},
                                  headers={"X-API-Key": key})
    assert r.status_code == 422
    # In the path: the other project does not exist for this key.
    r = await harness.client.patch(f"/v1/projects/{theirs}/integrations/slack/lifecycle",
                                   json={"status": "paused"}, headers={"X-API-Key": key})
    assert r.status_code == 404
    async with harness.app.state.sessions() as s:
        rows = {(i.project_id, i.provider): i.status
                for i in await s.scalars(select(Integration).where(
                    Integration.project_id.in_((mine, theirs))))}
    assert rows == {(mine, "shopify"): "active", (theirs, "slack"): "active"}


# -- AK-07 ---------------------------------------------------------------------------------

async def test_ak_07_a_revoked_key_fails_on_the_next_request_in_every_process(
        harness: Harness, second_worker: httpx2.AsyncClient) -> None:
    project = new_project()
    key = await harness.key(project, "read")
    url = f"/v1/projects/{project}/integrations"
    for client in (harness.client, second_worker, harness.client, second_worker):
        assert (await client.get(url, headers={"X-API-Key": key})).status_code == 200
    cli(harness.database, "api-keys", "revoke", str(auth.claimed_key_id(key)))
    for client in (harness.client, second_worker):
        r = await client.get(url, headers={"X-API-Key": key})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
    async with harness.app.state.sessions() as s:
        [event] = await s.scalars(select(AuditEvent).where(
            AuditEvent.project_id == project, AuditEvent.type == "api_key.revoked"))
        assert event.details == {"api_key_id": auth.claimed_key_id(key)}


class Clock:
    def __init__(self, now: float):
        self.now = now

    def monotonic(self) -> float:
        return self.now


async def test_ak_07_service_tokens_cached_for_at_most_the_stated_second(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one cache of credentials: service tokens, for ``TokenCache.TTL`` (1 s). An
    announced revocation clears it in every process at once; a missed one holds within the
    TTL. (API keys are not cached: the test above.)"""
    assert auth.TokenCache.TTL == 1.0
    clock = Clock(1000.0)
    monkeypatch.setattr(auth, "time", clock)
    url = f"/internal/v1/projects/{new_project()}/audit"

    async def status(t: str) -> int:
        r = await harness.client.get(url, headers={"Authorization": f"Bearer {t}"})
        return r.status_code

    async def revoke(token_id: str) -> None:
        async with harness.app.state.sessions() as s:
            await s.execute(update(ServiceToken).where(ServiceToken.id == token_id)
                            .values(revoked_at=utcnow()))
            await s.commit()

    for announced in (False, True):
        async with harness.app.state.sessions() as s:
            token_id, token = await store.create_service_token(s, "main-api")
        assert await status(token) == 200
        await revoke(token_id)
        if announced:  # as `broker service-tokens revoke` does, through Redis
            harness.app.state.credentials.receive('{"service_tokens": "revoked"}')
            assert await status(token) == 401
            continue
        clock.now += auth.TokenCache.TTL - 0.001
        assert await status(token) == 200  # inside the stated bound, from the cache
        clock.now += 0.001
        assert await status(token) == 401  # at the bound


# -- AK-08 ---------------------------------------------------------------------------------

async def test_ak_08_rotation_overlap_with_an_expiry_honoured_to_the_second(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    project = new_project()
    old, other = (await harness.key(project, "read"), await harness.key(project, "read"))
    url = f"/v1/projects/{project}/integrations"

    async def status(key: str) -> int:
        return (await harness.client.get(url, headers={"X-API-Key": key})).status_code

    assert (await status(old), await status(other)) == (200, 200)
    new = await harness.key(project, "read")
    assert (await status(old), await status(other), await status(new)) == (200, 200, 200)
    old_id = str(auth.claimed_key_id(old))
    started = utcnow()
    cli(harness.database, "api-keys", "expire", old_id, "--in", "1h")
    ends = (await _key_row(harness, old)).expires_at
    assert ends is not None
    assert timedelta(hours=1) <= ends - started <= timedelta(hours=1, seconds=30)
    listed = json.loads(cli(harness.database, "api-keys", "list", "--project", project,
                            "--json").stdout)
    entry = next(k for k in listed if k["id"] == old_id)
    assert datetime.fromisoformat(entry["expires_at"]) == ends
    assert entry["last_used_at"] is not None  # when the old key was last seen
    assert await status(old) == 200  # the overlap

    monkeypatch.setattr(auth, "utcnow", lambda: ends - timedelta(seconds=1))
    assert await status(old) == 200
    monkeypatch.setattr(auth, "utcnow", lambda: ends)
    r = await harness.client.get(url, headers={"X-API-Key": old})
    assert (r.status_code, r.json()["error"]["message"]) == (401, "Missing or invalid API key.")
    assert (await status(other), await status(new)) == (200, 200)
    # An end that has passed is final: expire cannot bring the key back.
    monkeypatch.undo()
    await _set_key(harness, old, expires_at=utcnow() - timedelta(seconds=1))
    refused = cli(harness.database, "api-keys", "expire", old_id, "--in", "7d", ok=False)
    assert "already revoked or expired" in refused.stderr
    assert await status(old) == 401


async def test_ak_08_last_used_at_shows_when_a_key_went_quiet(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    project = new_project()
    key = await harness.key(project, "read")
    assert (await _key_row(harness, key)).last_used_at is None
    url = f"/v1/projects/{project}/integrations"
    t0 = utcnow()
    monkeypatch.setattr(auth, "utcnow", lambda: t0)
    await harness.client.get(url, headers={"X-API-Key": key})
    assert (await _key_row(harness, key)).last_used_at == t0
    later = t0 + auth.LAST_USED_GRANULARITY + timedelta(seconds=1)
    monkeypatch.setattr(auth, "utcnow", lambda: later)
    await harness.client.get(url, headers={"X-API-Key": key})
    assert (await _key_row(harness, key)).last_used_at == later


# -- AK-09 ---------------------------------------------------------------------------------

SENTINELS = ("AT-SENTINEL-ak09-3c1f", "RT-SENTINEL-ak09-9e2a", "KEY-SENTINEL-ak09-51b7",
             "CS-SENTINEL-ak09-0d4c", "SETTING-SENTINEL-ak09")


@pytest.fixture
async def with_client_secret(settings: Settings, harness: Harness
                             ) -> AsyncIterator[httpx2.AsyncClient]:
    """The harness's database, with OAuth client credentials configured (so there is a
    client secret that must not leak)."""
    import dataclasses

    app = create_app(dataclasses.replace(settings, oauth_clients={
        "SLACK": ClientCredentials("slack-client-id", SENTINELS[3])}), ring=harness.ring)
    async with LifespanManager(app) as manager:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app),
                                      base_url="http://broker.test") as client:
            yield client


async def test_ak_09_no_token_secret_or_ciphertext_in_any_response(
        harness: Harness, with_client_secret: httpx2.AsyncClient) -> None:
    client = with_client_secret
    project = new_project()
    slack = await harness.install(project, "slack", access_token=SENTINELS[0],
                                  refresh_token=SENTINELS[1])
    mailgun = await harness.install(project, "mailgun", access_token=None, refresh_token=None,
                                    fields={"api_key": SENTINELS[2]})
    key = await harness.key(project, *READ_AND_WRITE)
    async with harness.app.state.sessions() as s:
        _, token = await store.create_service_token(s, "main-api")
        blobs = [blob for cid in (slack, mailgun)
                 for cred in [await s.get(Credential, cid)]
                 for blob in (cred.data_key_ct, cred.access_token_ct, cred.refresh_token_ct,
                              cred.secret_ct) if blob]
    headers = {"X-API-Key": key}
    base = f"/v1/projects/{project}/integrations"
    responses = []
    for method, url, body in [
        ("GET", base, None), ("GET", f"{base}/catalog", None),
        ("GET", f"{base}/catalog/slack", None), ("GET", f"{base}/catalog/mailgun", None),
        ("PATCH", f"{base}/slack/lifecycle", {"settings": {"secret_ref": SENTINELS[4]}}),
        ("PATCH", f"{base}/mailgun/lifecycle", {"display_name": "Mail"}),
        ("POST", f"{base}/slack/install-url", None),
        ("DELETE", f"{base}/mailgun?revoke=true", None),
        ("DELETE", f"{base}/slack", None),
    ]:
        r = await client.request(method, url, json=body, headers=headers)
        assert r.status_code == 200, (url, r.text)
        responses.append(r)
    audit = await client.get(f"/internal/v1/projects/{project}/audit",
                             headers={"Authorization": f"Bearer {token}"})
    assert audit.status_code == 200
    text = b"".join(r.content + repr(r.headers).encode() for r in [*responses, audit])
    for secret in (*SENTINELS[:4], key[4:], token[4:]):
        for encoded in _encodings(secret):
            assert encoded not in text, secret
    for blob in blobs:
        for encoded in (blob, blob.hex().encode(), base64.b64encode(blob)):
            assert encoded not in text
    # Settings are the tenant's own configuration: returned to it, but not in the audit log.
    assert SENTINELS[4].encode() not in audit.content
    integration = responses[0].json()["data"][0]
    assert set(integration) == {"id", "provider", "status", "display_name", "setup_type",
                                "health_status", "sidebar_enabled", "last_synced_at",
                                "error_message", "created_at", "updated_at", "settings",
                                "allowed_actions", "metadata"}
