"""What lands in the database: no secret in clear (raw SQLite file and pg_dump), rows whose
ciphertext was moved do not decrypt, and audit rows exist exactly for changes."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest
from sqlalchemy import select, update

from broker import store
from broker.errors import CryptoError
from broker.models import Credential, Integration
from tests.conftest import PG_ADMIN_DSN, Harness, new_project

pytestmark = pytest.mark.anyio

SENTINELS = {
    "access": "AT-SENTINEL-4f1d2c9b7e",
    "refresh": "RT-SENTINEL-8a3e6b1c0d",
    "api_key": "KEY-SENTINEL-77c2e9a0f1",
}


def _encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw),
            value.encode("utf-16-le")]


def _dump(h: Harness) -> bytes:
    db = h.database
    if db.kind == "sqlite":
        assert db.path is not None
        # The WAL holds recent writes that the main file may not have yet.
        return b"".join(p.read_bytes() for p in db.path.parent.glob(db.path.name + "*"))
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.fail("pg_dump is not installed")
    url = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{db.name}"
    return subprocess.run([pg_dump, "--data-only", url], check=True, capture_output=True,
                          timeout=60).stdout


async def test_no_secret_in_clear_in_a_database_dump(harness: Harness) -> None:
    project = new_project()
    await harness.install(project, "slack", access_token=SENTINELS["access"],
                          refresh_token=SENTINELS["refresh"])
    await harness.install(project, "postmark", access_token=None, refresh_token=None,
                          fields={"server_token": SENTINELS["api_key"]})
    key = await harness.key(project, "read", "integrations:write")
    dump = _dump(harness)
    assert project.encode() in dump  # the dump really holds this run's rows
    for value in [*SENTINELS.values(), key, key[4:]]:
        for encoded in _encodings(value):
            assert encoded not in dump, value


async def test_ciphertext_copied_to_another_integration_does_not_decrypt(
        harness: Harness) -> None:
    a, b = new_project(), new_project()
    id_a = await harness.install(a, "slack", access_token="token-of-a")
    id_b = await harness.install(b, "slack", access_token="token-of-b")
    async with harness.app.state.sessions() as s:
        src = await s.get(Credential, id_a)
        await s.execute(update(Credential).where(Credential.integration_id == id_b).values(
            data_key_ct=src.data_key_ct, access_token_ct=src.access_token_ct,
            refresh_token_ct=src.refresh_token_ct, secret_ct=src.secret_ct))
        await s.commit()
    async with harness.app.state.sessions() as s:
        integration_b = await s.get(Integration, id_b)
        cred_b = await s.get(Credential, id_b)
        with pytest.raises(CryptoError):
            store.open_credential(harness.ring, integration_b, cred_b)
        # The original still opens where it belongs.
        integration_a = await s.get(Integration, id_a)
        cred_a = await s.get(Credential, id_a)
        assert store.open_credential(harness.ring, integration_a, cred_a).access_token == (
            "token-of-a")


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
