"""What lands in the database: credentials round-trip with a version, and audit rows exist
exactly for changes. (No secret in clear and ciphertext bound to its row: checklist KS-01
and KS-02 in tests/security/test_key_storage.py.)"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from broker import store
from broker.models import Credential, Integration
from tests.conftest import Harness, new_project

pytestmark = pytest.mark.anyio


async def test_credential_round_trip_and_version(harness: Harness) -> None:
    project = new_project()
    integration_id = await harness.install(project, "mailgun", access_token=None,
                                           refresh_token=None,
                                           fields={"api_key": "k", "region": "api"})
    async with harness.app.state.sessions() as s:
        integration = await s.get(Integration, integration_id)
        cred = await s.get(Credential, integration_id)
        assert cred.version == 1 and cred.key_id == "ktest1"
        opened = store.open_credential(harness.ring, integration, cred)
        assert (opened.access_token, dict(opened.fields)) == (None, {"api_key": "k",
                                                                     "region": "api"})
        assert "api_key" not in repr(opened) and "'k'" not in repr(opened)
        await store.write_credential(s, harness.ring, integration,
                                     store.Secrets(access_token="new"))
        await s.commit()
    async with harness.app.state.sessions() as s:
        cred = await s.get(Credential, integration_id)
        assert cred.version == 2


async def test_audit_rows_only_for_changes(harness: Harness) -> None:
    from broker.models import AuditEvent

    project = new_project()
    await harness.install(project, "shopify")
    key = await harness.key(project, "read", "integrations:write")
    base = f"/v1/projects/{project}/integrations/shopify"
    calls = [
        ("PATCH", "/lifecycle", {"status": "paused"}, 200),
        ("PATCH", "/lifecycle", {"status": "paused"}, 200),       # no change
        ("PATCH", "/lifecycle", {"status": "bogus"}, 422),        # failed
        ("PATCH", "/lifecycle", {"allowed_actions": ["x.y"]}, 422),
        ("PATCH", "/lifecycle", {"display_name": "Shop"}, 200),
        ("DELETE", "", None, 200),
        ("DELETE", "", None, 200),                                # no change
        ("PATCH", "/lifecycle", {"status": "active"}, 409),       # failed
    ]
    for method, suffix, body, expected in calls:
        r = await harness.client.request(method, base + suffix, json=body,
                                         headers={"X-API-Key": key})
        assert r.status_code == expected, (method, body, r.text)
    async with harness.app.state.sessions() as s:
        events = list(await s.scalars(select(AuditEvent).where(
            AuditEvent.project_id == project, AuditEvent.type.like("integration.%"))
            .order_by(AuditEvent.id)))
    assert [e.type for e in events] == ["integration.lifecycle.updated",
                                        "integration.lifecycle.updated",
                                        "integration.disconnected"]
    assert [list(e.details.get("changes", {})) for e in events[:2]] == [["status"],
                                                                        ["display_name"]]


async def test_a_failing_audit_write_fails_the_change(harness: Harness) -> None:
    project = new_project()
    integration_id = await harness.install(project, "shopify")
    key = await harness.key(project, "read", "integrations:write")
    name = f"fail_audit_{project}"
    if harness.database.kind == "sqlite":
        ddl = [f"CREATE TRIGGER {name} BEFORE INSERT ON audit_events "
               f"WHEN NEW.project_id = '{project}' BEGIN SELECT RAISE(ABORT, 'audit down'); END"]
        drop = [f"DROP TRIGGER {name}"]
    else:
        ddl = [f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
               "$$ BEGIN RAISE EXCEPTION 'audit down'; END $$",
               f"CREATE TRIGGER {name} BEFORE INSERT ON audit_events FOR EACH ROW "
               f"WHEN (NEW.project_id = '{project}') EXECUTE FUNCTION {name}()"]
        drop = [f"DROP TRIGGER {name} ON audit_events", f"DROP FUNCTION {name}()"]
    from sqlalchemy import text

    async with harness.app.state.engine.begin() as conn:
        for statement in ddl:
            await conn.execute(text(statement))
    try:
        base = f"/v1/projects/{project}/integrations/shopify"
        r = await harness.client.patch(f"{base}/lifecycle", json={"status": "paused"},
                                       headers={"X-API-Key": key})
        assert r.status_code == 500
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
        r = await harness.client.delete(base, headers={"X-API-Key": key})
        assert r.status_code == 500
    finally:
        async with harness.app.state.engine.begin() as conn:
            for statement in drop:
                await conn.execute(text(statement))
    async with harness.app.state.sessions() as s:
        integration = await s.get(Integration, integration_id)
        assert integration.status == "active" and integration.sidebar_enabled is True
        assert await s.get(Credential, integration_id) is not None
