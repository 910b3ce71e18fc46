"""Lifecycle PATCH and DELETE: what changes, what is audited, and what bad input leaves
untouched. Runs against SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from broker.models import AuditEvent, Credential, Integration
from tests.conftest import Harness, new_project

pytestmark = pytest.mark.anyio


class Setup:
    def __init__(self, h: Harness, project: str, key: str, provider: str):
        self.h, self.project, self.key, self.provider = h, project, key, provider
        self.base = f"/v1/projects/{project}/integrations/{provider}"

    async def patch(self, body: Any = None, *, content: bytes | None = None,
                    headers: dict[str, str] | None = None) -> Any:
        kwargs: dict[str, Any] = {"content": content} if content is not None else {"json": body}
        return await self.h.client.patch(f"{self.base}/lifecycle",
                                         headers={"X-API-Key": self.key, **(headers or {})},
                                         **kwargs)

    async def delete(self, query: str = "") -> Any:
        return await self.h.client.delete(f"{self.base}{query}",
                                          headers={"X-API-Key": self.key})

    async def row(self) -> Integration:
        async with self.h.app.state.sessions() as s:
            return (await s.scalars(select(Integration).where(
                Integration.project_id == self.project,
                Integration.provider == self.provider))).one()

    async def credential(self) -> Credential | None:
        row = await self.row()
        async with self.h.app.state.sessions() as s:
            return await s.get(Credential, row.id)

    async def audits(self) -> list[AuditEvent]:
        async with self.h.app.state.sessions() as s:
            return list(await s.scalars(select(AuditEvent).where(
                AuditEvent.project_id == self.project,
                AuditEvent.type.like("integration.%")).order_by(AuditEvent.id)))


async def installed(h: Harness, provider: str = "shopify") -> Setup:
    project = new_project()
    await h.install(project, provider, access_token="shpat-SENTINEL")
    key = await h.key(project, "read", "integrations:write")
    return Setup(h, project, key, provider)


def snapshot(row: Integration) -> tuple[Any, ...]:
    return (row.status, row.display_name, row.sidebar_enabled, row.health_status,
            row.settings, row.allowed_actions, row.updated_at)


async def test_patch_every_field_is_applied_and_audited(harness: Harness) -> None:
    it = await installed(harness)
    r = await it.patch({"status": "paused", "display_name": "Acme Store",
                        "sidebar_enabled": False, "settings": {"refunds_enabled": True},
                        "allowed_actions": ["orders.read", "refunds.create"]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert (data["status"], data["display_name"], data["sidebar_enabled"]) == (
        "paused", "Acme Store", False)
    assert data["settings"] == {"refunds_enabled": True}
    assert data["allowed_actions"] == ["orders.read", "refunds.create"]
    row = await it.row()
    assert (row.status, row.display_name, row.settings) == (
        "paused", "Acme Store", {"refunds_enabled": True})
    [event] = await it.audits()
    assert event.type == "integration.lifecycle.updated"
    assert event.actor_key_id and event.actor_key_id.startswith("ak_")
    assert event.request_id == r.headers["x-request-id"]
    assert (event.integration_id, event.provider) == (row.id, "shopify")
    changes = event.details["changes"]
    assert changes["status"] == {"from": "active", "to": "paused"}
    assert changes["display_name"] == {"from": None, "to": "Acme Store"}
    assert changes["settings"] == {"set": ["refunds_enabled"], "removed": []}
    assert set(changes) == {"status", "display_name", "sidebar_enabled", "settings",
                            "allowed_actions"}


async def test_settings_merge_and_null_removes(harness: Harness) -> None:
    it = await installed(harness)
    await it.patch({"settings": {"a": 1, "b": {"deep": [1, 2]}, "token": "s3cr3t-value"}})
    r = await it.patch({"settings": {"a": None, "c": "x", "absent": None}})
    assert r.json()["data"]["settings"] == {"b": {"deep": [1, 2]}, "token": "s3cr3t-value",
                                            "c": "x"}
    events = await it.audits()
    assert events[-1].details["changes"]["settings"] == {"set": ["c"], "removed": ["a"]}
    # Setting values never reach the audit log.
    assert all("s3cr3t" not in str(e.details) for e in events)


async def test_unchanged_patch_writes_no_audit_row(harness: Harness) -> None:
    it = await installed(harness)
    r = await it.patch({"status": "active", "settings": {"missing": None}})
    assert r.status_code == 200
    assert await it.audits() == []


BAD_PATCHES: list[tuple[Any, int, str]] = [
    ({"status": "deleted"}, 422, "invalid_status"),
    ({"status": None}, 422, "invalid_status"),
    ({"status": ["active"]}, 422, "invalid_status"),
    ({"allowed_actions": ["orders.read", "nukes.launch"]}, 422, "unknown_action"),
    ({"allowed_actions": ["chat.write"]}, 422, "unknown_action"),  # Slack's, not Shopify's
    ({"allowed_actions": "orders.read"}, 422, "validation_error"),
    ({"allowed_actions": [1]}, 422, "validation_error"),
    ({"allowed_actions": ["orders.read", "orders.read"]}, 422, "validation_error"),
    ({"settings": ["a"]}, 422, "validation_error"),
    ({"settings": "a=1"}, 422, "validation_error"),
    ({"settings": None}, 422, "validation_error"),
    ({"settings": {"k": "nul\u0000byte"}}, 422, "validation_error"),
    ({"settings": {"": 1}}, 422, "validation_error"),
    ({"settings": {"k\nx": 1}}, 422, "validation_error"),
    ({"settings": {"x": [[[[[[[[[[1]]]]]]]]]]}}, 422, "validation_error"),
    ({"settings": {"big": "x" * 20000}}, 422, "validation_error"),
    ({"display_name": 5}, 422, "validation_error"),
    ({"display_name": ""}, 422, "validation_error"),
    ({"display_name": "   "}, 422, "validation_error"),
    ({"display_name": "x" * 101}, 422, "validation_error"),
    ({"display_name": "evil\u202eexe.txt"}, 422, "validation_error"),
    ({"display_name": "line\nbreak"}, 422, "validation_error"),
    ({"sidebar_enabled": "true"}, 422, "validation_error"),
    ({"sidebar_enabled": 1}, 422, "validation_error"),
    ({"sidebar_enabled": None}, 422, "validation_error"),
    ({"status": "paused", "provider_id": "x"}, 422, "unknown_field"),
    ({"project_id": "prj_other"}, 422, "unknown_field"),
    ({}, 422, "validation_error"),
    ([{"status": "paused"}], 422, "validation_error"),
    ("paused", 422, "validation_error"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_PATCHES)
async def test_bad_patch_is_refused_and_changes_nothing(
        harness: Harness, body: Any, status: int, code: str) -> None:
    it = await installed(harness)
    before = snapshot(await it.row())
    r = await it.patch(body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert r.json()["error"]["message"]
    assert snapshot(await it.row()) == before
    assert await it.audits() == []


BAD_BODIES: list[tuple[bytes, str]] = [
    (b'{"status": "paused"', "invalid_json"),
    (b"", "invalid_json"),
    (b"\xff\xfe{}", "invalid_json"),
    (b'{"status": NaN}', "invalid_json"),
    (b'{"status": "paused", "status": "active"}', "invalid_json"),
    (b"[" * 100000, "invalid_json"),
    (b'{"display_name": "\\ud800"}', "validation_error"),
    (b"null", "validation_error"),
]


@pytest.mark.parametrize(("content", "code"), BAD_BODIES)
async def test_malformed_bodies(harness: Harness, content: bytes, code: str) -> None:
    it = await installed(harness)
    before = snapshot(await it.row())
    r = await it.patch(content=content, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"] in (code, "body_too_large")
    assert snapshot(await it.row()) == before
    assert await it.audits() == []


async def test_oversized_body_is_refused(harness: Harness) -> None:
    it = await installed(harness)
    before = snapshot(await it.row())
    big = b'{"settings": {"x": "' + b"a" * (70 * 1024) + b'"}}'
    r = await it.patch(content=big, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "body_too_large")

    async def chunks() -> Any:  # no Content-Length: the limit still holds while streaming
        for _ in range(100):
            yield b"a" * 1024

    r = await harness.client.patch(f"{it.base}/lifecycle", content=chunks(),
                                   headers={"X-API-Key": it.key})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "body_too_large")
    assert snapshot(await it.row()) == before


async def test_odd_unicode_is_stored_exactly(harness: Harness) -> None:
    it = await installed(harness)
    name = "Zo\u0308e's \U0001F6D2 Store \u05e9\u05dc\u05d5\u05dd \u200d"
    settings = {"\u00e9moji \U0001F600": "\u4e2d\u6587 \u200b", "rtl": "\u0627\u0644"}
    r = await it.patch({"display_name": name, "settings": settings})
    assert r.status_code == 200, r.text
    row = await it.row()
    assert row.display_name == "Z\u00f6e's \U0001F6D2 Store \u05e9\u05dc\u05d5\u05dd \u200d"  # NFC
    assert row.settings == settings


async def test_disconnect_destroys_credential_and_keeps_history(harness: Harness) -> None:
    it = await installed(harness)
    await it.patch({"display_name": "Shop", "settings": {"k": 1}})
    assert await it.credential() is not None
    r = await it.delete()
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert (data["status"], data["sidebar_enabled"], data["health_status"]) == (
        "disconnected", False, None)
    assert "revoked" not in data
    assert await it.credential() is None
    row = await it.row()
    assert (row.display_name, row.settings) == ("Shop", {"k": 1})
    events = await it.audits()
    assert [e.type for e in events] == ["integration.lifecycle.updated",
                                        "integration.disconnected"]
    assert events[-1].details["credential_destroyed"] is True
    assert events[-1].actor_key_id == events[0].actor_key_id
    # Still listed, with its history.
    listed = await harness.client.get(f"/v1/projects/{it.project}/integrations",
                                      headers={"X-API-Key": it.key})
    assert listed.json()["data"][0]["status"] == "disconnected"
    # A second disconnect is not a change: 200 and no new audit row.
    assert (await it.delete()).status_code == 200
    assert len(await it.audits()) == 2


async def test_disconnect_with_revoke_reports_what_was_revoked(harness: Harness) -> None:
    it = await installed(harness, "slack")
    r = await it.delete("?revoke=true")
    assert r.status_code == 200
    assert r.json()["data"]["revoked"] == []
    [event] = await it.audits()
    assert event.details["revoke_requested"] is True
    assert (await it.delete("?revoke=maybe")).status_code == 422
    assert (await it.delete("?purge=true")).status_code == 422


async def test_reactivating_without_credential_needs_reinstall(harness: Harness) -> None:
    it = await installed(harness)
    await it.delete()
    before = snapshot(await it.row())
    for status in ("active", "paused"):
        r = await it.patch({"status": status})
        assert (r.status_code, r.json()["error"]["code"]) == (409, "reinstall_required")
    assert snapshot(await it.row()) == before
    assert len(await it.audits()) == 1


async def test_patch_status_disconnected_wipes_like_delete(harness: Harness) -> None:
    it = await installed(harness)
    r = await it.patch({"status": "disconnected"})
    assert r.json()["data"]["sidebar_enabled"] is False
    assert await it.credential() is None
    [event] = await it.audits()
    assert event.details["changes"]["status"] == {"from": "active", "to": "disconnected"}


async def test_pause_and_resume_keep_the_credential(harness: Harness) -> None:
    it = await installed(harness)
    await it.patch({"status": "paused"})
    assert await it.credential() is not None
    r = await it.patch({"status": "active"})
    assert r.json()["data"]["status"] == "active"
    assert len(await it.audits()) == 2


async def test_never_installed_provider_is_404(harness: Harness) -> None:
    it = await installed(harness)
    other = Setup(harness, it.project, it.key, "mailgun")
    assert (await other.patch({"status": "paused"})).status_code == 404
    assert (await other.delete()).status_code == 404
    unknown = Setup(harness, it.project, it.key, "not-a-provider")
    assert (await unknown.patch({"status": "paused"})).status_code == 404
    assert await it.audits() == []
