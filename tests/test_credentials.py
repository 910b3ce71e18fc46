"""The credentials endpoint for the main API: hand-out, refresh (single-flight, rotation,
transient failures), lifecycle gates, revocation on disconnect. Lost races, dead grants,
faults and locks are the security checklist's, in tests/security/test_refresh_safety.py.
The provider is the fake RFC 6749 server over real HTTP; runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from broker import apikeys, auth, store
from broker.crypto import KeyRing
from broker.db import utcnow
from broker.models import AuditEvent, Credential, Integration, ServiceToken
from broker.settings import Settings
from tests.conftest import new_project
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import FakeState
from tests.test_connect import Flow, flow_settings, make_flow  # noqa: F401

pytestmark = pytest.mark.anyio


@pytest.fixture
async def f(flow_settings: Settings, ring: KeyRing,  # noqa: F811
            fakes: tuple[str, FakeState]) -> AsyncIterator[Flow]:
    async for value in make_flow(flow_settings, ring, fakes):
        yield value


async def service_token(f: Flow) -> str:
    async with f.app.state.sessions() as s:
        return (await store.create_service_token(s, "main-api"))[1]


async def installed(f: Flow, *, expires_in: timedelta = timedelta(hours=1),
                    refresh_token: str | None = "rt-seed") -> tuple[str, str]:
    """An acme integration whose refresh token the fake knows; returns (project, id)."""
    project = new_project()
    if refresh_token:
        f.fakes.refresh_tokens[refresh_token] = "read write"
    async with f.app.state.sessions() as s:
        await store.ensure_project(s, project)
        integration = await store.upsert_integration(
            s, project_id=project, provider="acme", setup_type="oauth",
            metadata={"account": "A-1"})
        await store.write_credential(
            s, f.app.state.ring, integration,
            store.Secrets(access_token="at-seed", refresh_token=refresh_token),
            token_type="bearer", scopes=["read", "write"], expires_at=utcnow() + expires_in)
        await s.commit()
        return project, integration.id


class Api:
    def __init__(self, f: Flow, token: str, project: str):
        self.f, self.project = f, project
        self.headers = {"Authorization": f"Bearer {token}"}
        self.base = f"/internal/v1/projects/{project}/integrations/acme"

    async def read(self) -> Any:
        return await self.f.browser.get(f"{self.base}/credentials", headers=self.headers)

    async def patch(self, body: dict[str, Any], acting: str | None = None) -> Any:
        headers = {**self.headers, **({"X-Acting-Key-Id": acting} if acting else {})}
        return await self.f.browser.patch(f"{self.base}/lifecycle", json=body, headers=headers)

    async def delete(self, query: str = "", acting: str | None = None) -> Any:
        headers = {**self.headers, **({"X-Acting-Key-Id": acting} if acting else {})}
        return await self.f.browser.delete(f"{self.base}{query}", headers=headers)

    async def row(self) -> tuple[Integration, Credential | None]:
        async with self.f.app.state.sessions() as s:
            integration = (await s.scalars(select(Integration).where(
                Integration.project_id == self.project))).one()
            return integration, await s.get(Credential, integration.id)


async def api_for(f: Flow, **kwargs: Any) -> Api:
    project, _ = await installed(f, **kwargs)
    return Api(f, await service_token(f), project)


def refreshes(f: Flow) -> list[dict[str, Any]]:
    return [r for r in f.fakes.token_requests if r["grant_type"] == "refresh_token"]


async def test_a_fresh_token_is_handed_out_without_a_provider_call(f: Flow) -> None:
    api = await api_for(f)
    r = await api.read()
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert (data["access_token"], data["token_type"], data["provider"]) == (
        "at-seed", "bearer", "acme")
    assert data["scopes"] == ["read", "write"] and data["metadata"] == {"account": "A-1"}
    assert data["allowed_actions"] == [] and data["expires_at"].endswith("Z")
    assert "refresh_token" not in r.text and "rt-seed" not in r.text
    assert f.fakes.token_requests == []


async def test_service_token_required(f: Flow) -> None:
    api = await api_for(f)
    for headers in ({}, {"Authorization": "Bearer rst_bogus"},
                    {"X-API-Key": "riq_bogus"}):
        r = await f.browser.get(f"{api.base}/credentials", headers=headers)
        assert r.status_code == 401
    assert (await api.read()).status_code == 200
    token = api.headers["Authorization"].split()[1]
    async with f.app.state.sessions() as s:
        await s.execute(update(ServiceToken).where(
            ServiceToken.id == f"st_{apikeys.parse('rst_', token)}").values(revoked_at=utcnow()))
        await s.commit()
    # A revocation announced on the channel takes effect at once ...
    f.app.state.credentials.receive('{"service_tokens": "revoked"}')
    assert (await api.read()).status_code == 401


async def test_a_burst_of_cold_reads_looks_the_service_token_up_once(
        f: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent first requests with one service token share one database lookup, even
    when the lookup's first step yields (the rate-limit check asks Redis): a burst of
    lookups every TTL took a pooled connection each and made the pool churn."""
    api = await api_for(f)
    lookups = 0
    real_lookup, real_refuse = auth.authenticate_service, auth.limits.refuse_if_blocked

    async def counted(*args: Any) -> str:
        nonlocal lookups
        lookups += 1
        return await real_lookup(*args)

    async def yielding(request: Any) -> None:
        await asyncio.sleep(0.01)  # what a Redis round trip does to the event loop
        await real_refuse(request)

    monkeypatch.setattr(auth, "authenticate_service", counted)
    monkeypatch.setattr(auth.limits, "refuse_if_blocked", yielding)
    results = await asyncio.gather(*(api.read() for _ in range(20)))
    assert [r.status_code for r in results] == [200] * 20
    assert lookups == 1


async def test_unannounced_service_token_revocation_holds_within_a_second(f: Flow) -> None:
    api = await api_for(f)
    assert (await api.read()).status_code == 200
    token = api.headers["Authorization"].split()[1]
    async with f.app.state.sessions() as s:
        await s.execute(update(ServiceToken).where(
            ServiceToken.id == f"st_{apikeys.parse('rst_', token)}").values(revoked_at=utcnow()))
        await s.commit()
    # ... and without the announcement, within the cache's stated bound.
    await asyncio.sleep(1.05)
    assert (await api.read()).status_code == 401


async def test_expiring_token_is_refreshed_and_rotated(f: Flow) -> None:
    api = await api_for(f, expires_in=timedelta(minutes=2))
    _, before = await api.row()
    r = await api.read()
    assert r.status_code == 200, r.text
    new_access = r.json()["data"]["access_token"]
    assert new_access != "at-seed" and new_access in f.fakes.access_tokens
    [sent] = refreshes(f)
    assert sent["body"]["refresh_token"] == "rt-seed"
    integration, after = await api.row()
    assert after is not None and before is not None and after.version == before.version + 1
    opened = store.open_credential(f.app.state.ring, integration, after)
    assert opened.access_token == new_access
    assert opened.refresh_token in f.fakes.refresh_tokens  # the rotated one, kept
    assert "rt-seed" not in f.fakes.refresh_tokens
    assert after.expires_at is not None and after.expires_at > utcnow() + timedelta(minutes=50)
    assert (integration.health_status, integration.error_message) == ("healthy", None)
    # The next read uses the stored token.
    assert (await api.read()).json()["data"]["access_token"] == new_access
    assert len(refreshes(f)) == 1


async def test_a_response_without_refresh_token_keeps_the_old_one(
        f: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    from broker import flow as flow_module
    from broker.spec import TokenResponse

    async def no_rotation(*args: Any, **kwargs: Any) -> TokenResponse:
        return TokenResponse(access_token="at-new", refresh_token=None, expires_in=3600)

    monkeypatch.setattr(flow_module, "refresh", no_rotation)
    api = await api_for(f, expires_in=timedelta(seconds=10))
    assert (await api.read()).json()["data"]["access_token"] == "at-new"
    integration, credential = await api.row()
    assert credential is not None
    assert store.open_credential(f.app.state.ring, integration,
                                 credential).refresh_token == "rt-seed"


async def test_concurrent_reads_make_one_refresh(f: Flow) -> None:
    f.fakes.token_mode = "slow"
    f.fakes.slow_seconds = 0.3
    api = await api_for(f, expires_in=timedelta(seconds=-5))
    results = await asyncio.gather(*(api.read() for _ in range(50)))
    assert {r.status_code for r in results} == {200}
    assert len({r.json()["data"]["access_token"] for r in results}) == 1
    assert len(refreshes(f)) == 1


@pytest.mark.parametrize("mode", ["server_error", "hang"])
async def test_transient_failure_keeps_the_token_and_degrades(f: Flow, mode: str) -> None:
    f.fakes.token_mode = mode
    f.fakes.hang_seconds = 10
    api = await api_for(f, expires_in=timedelta(minutes=2))
    _, before = await api.row()
    r = await api.read()
    # Still valid for two minutes: handed out, with the integration marked degraded.
    assert r.status_code == 200 and r.json()["data"]["access_token"] == "at-seed"
    integration, after = await api.row()
    assert integration.health_status == "degraded" and integration.error_message
    assert after is not None and before is not None
    assert (after.access_token_ct, after.refresh_token_ct, after.version) == (
        before.access_token_ct, before.refresh_token_ct, before.version)
    assert after.retry_at is not None and after.retry_at > utcnow()
    # Backing off: the next read does not call the provider again.
    assert (await api.read()).status_code == 200
    assert len(refreshes(f)) == 1


async def test_paused_hands_out_nothing_until_reactivated(f: Flow) -> None:
    api = await api_for(f)
    r = await api.patch({"status": "paused"}, acting="ak_acting123")
    assert r.status_code == 200
    r = await api.read()
    assert (r.status_code, r.json()["error"]["code"]) == (409, "integration_paused")
    assert (await api.patch({"status": "active"})).status_code == 200
    assert (await api.read()).status_code == 200
    async with f.app.state.sessions() as s:
        events = list(await s.scalars(select(AuditEvent).where(
            AuditEvent.project_id == api.project,
            AuditEvent.type == "integration.lifecycle.updated").order_by(AuditEvent.id)))
    assert [e.actor_key_id for e in events] == ["ak_acting123", None]
    bad = await api.patch({"status": "paused"}, acting="ak bad\nid")
    assert bad.status_code == 422


async def test_disconnect_with_revoke_revokes_at_the_provider(f: Flow) -> None:
    api = await api_for(f)
    r = await api.delete("?revoke=true", acting="ak_ops")
    data = r.json()["data"]
    assert (data["status"], data["revoked"], data["revocation_error"]) == (
        "disconnected", ["refresh_token"], None)
    [sent] = f.fakes.revoke_requests
    assert sent["body"]["token"] == "rt-seed"
    assert sent["body"]["token_type_hint"] == "refresh_token"
    r = await api.read()
    assert r.json()["error"]["code"] == "integration_disconnected"
    audit = await f.browser.get(f"/internal/v1/projects/{api.project}/audit?limit=1",
                                headers=api.headers)
    [event] = audit.json()["data"]
    assert (event["type"], event["actor_key_id"]) == ("integration.disconnected", "ak_ops")
    assert event["details"]["revoked"] == ["refresh_token"]


async def test_audit_listing_pages_newest_first(f: Flow) -> None:
    api = await api_for(f)
    for name in ("One", "Two", "Three"):
        await api.patch({"display_name": name})
    url = f"/internal/v1/projects/{api.project}/audit"
    first = (await f.browser.get(f"{url}?limit=2", headers=api.headers)).json()["data"]
    assert [e["details"]["changes"]["display_name"]["to"] for e in first] == ["Three", "Two"]
    rest = (await f.browser.get(f"{url}?limit=2&before={first[-1]['id']}",
                                headers=api.headers)).json()["data"]
    assert rest[0]["details"]["changes"]["display_name"]["to"] == "One"
    for bad in ("limit=0", "limit=x", "before=-1", "other=1"):
        assert (await f.browser.get(f"{url}?{bad}", headers=api.headers)).status_code == 422


async def test_reads_are_recorded(f: Flow) -> None:
    api = await api_for(f)
    await api.read()
    await f.app.state.credentials.flush_reads()
    _, credential = await api.row()
    assert credential is not None and credential.last_read_at is not None
    assert credential.last_read_by is not None and credential.last_read_by.startswith("st_")


async def test_key_provider_credentials(f: Flow) -> None:
    from tests.fakes.providers import POSTMARK_TOKEN

    project = new_project()
    async with f.app.state.sessions() as s:
        await store.ensure_project(s, project)
        integration = await store.upsert_integration(s, project_id=project,
                                                     provider="postmark", setup_type="api_key")
        await store.write_credential(s, f.app.state.ring, integration,
                                     store.Secrets(fields={"server_token": POSTMARK_TOKEN}))
        await s.commit()
    token = await service_token(f)
    r = await f.browser.get(f"/internal/v1/projects/{project}/integrations/postmark/credentials",
                            headers={"Authorization": f"Bearer {token}"})
    data = r.json()["data"]
    assert data["api_key"] == POSTMARK_TOKEN and data["fields"] == {"server_token": POSTMARK_TOKEN}
    assert "access_token" not in data
