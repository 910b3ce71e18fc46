"""Hostile path parameters and queries: a clear 4xx, nothing stored, nothing in the logs
that should not be there."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from broker import logs
from broker.models import AuditEvent, ConnectSession, Integration
from tests.conftest import Harness, new_project

pytestmark = pytest.mark.anyio

HOSTILE = [
    "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "slack%00", "slack%0d%0aX-Injected:%201",
    "slack'%20OR%20'1'='1", "slack;DROP%20TABLE%20integrations", "%E2%80%AEkcals",
    "SLACK", "slack%20", "*", "%7B%7Bprovider%7D%7D", "a" * 300, "%F0%9F%92%A5",
]


async def _counts(h: Harness) -> tuple[int, int, int]:
    async with h.app.state.sessions() as s:
        return (await s.scalar(select(func.count()).select_from(Integration)),
                await s.scalar(select(func.count()).select_from(AuditEvent)),
                await s.scalar(select(func.count()).select_from(ConnectSession)))


@pytest.mark.parametrize("provider", HOSTILE)
async def test_hostile_provider_segment(harness: Harness, provider: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    project = new_project()
    await harness.install(project, "slack")
    key = await harness.key(project, "read", "integrations:write")
    headers = {"X-API-Key": key}
    base = f"/v1/projects/{project}/integrations"
    before = await _counts(harness)
    caplog.set_level(logging.DEBUG)
    for method, url, body in [
        ("GET", f"{base}/catalog/{provider}", None),
        ("POST", f"{base}/{provider}/install-url", None),
        ("PATCH", f"{base}/{provider}/lifecycle", {"status": "paused"}),
        ("DELETE", f"{base}/{provider}", None),
    ]:
        r = await harness.client.request(method, url, json=body, headers=headers)
        assert r.status_code in (404, 405, 422), (method, url, r.status_code)
        assert r.json()["error"]["code"] in ("not_found", "method_not_allowed",
                                             "validation_error")
    assert await _counts(harness) == before
    text = caplog.text
    assert key not in text and key[4:] not in text
    assert "\r\nX-Injected" not in text and "\nX-Injected" not in text


@pytest.mark.parametrize("project", ["..", "prj%2F..%2Fother", "prj%0d%0a", "' OR 1=1 --",
                                     "p" * 65, "%00"])
async def test_hostile_project_segment(harness: Harness, project: str) -> None:
    own = new_project()
    key = await harness.key(own, "read")
    r = await harness.client.get(f"/v1/projects/{project}/integrations",
                                 headers={"X-API-Key": key})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_unknown_query_parameters_are_refused(harness: Harness) -> None:
    project = new_project()
    key = await harness.key(project, "read")
    for query in ("project_id=prj_other", "limit=10", "x=%0d%0a"):
        r = await harness.client.get(f"/v1/projects/{project}/integrations?{query}",
                                     headers={"X-API-Key": key})
        assert r.status_code == 422, query


async def test_tenant_comes_only_from_the_key(harness: Harness) -> None:
    mine, theirs = new_project(), new_project()
    await harness.install(theirs, "slack")
    await harness.install(mine, "shopify")
    key = await harness.key(mine, "read", "integrations:write")
    for headers in ({"X-Project-Id": theirs}, {"X-Project": theirs}):
        r = await harness.client.get(f"/v1/projects/{mine}/integrations",
                                     headers={"X-API-Key": key, **headers})
        assert [i["provider"] for i in r.json()["data"]] == ["shopify"]
    r = await harness.client.patch(f"/v1/projects/{mine}/integrations/shopify/lifecycle",
                                   json={"project_id": theirs, "status": "paused"},
                                   headers={"X-API-Key": key})
    assert r.status_code == 422


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """DEBUG everywhere, with the library caps ``broker serve`` applies."""
    saved = {name: logging.getLogger(name).level for name in logs.CAPPED_LOGGERS}
    logs.cap_library_loggers()
    caplog.set_level(logging.DEBUG)
    yield caplog
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


async def test_logs_carry_no_secrets_or_bodies(harness: Harness,
                                               debug_logs: pytest.LogCaptureFixture) -> None:
    caplog = debug_logs
    project = new_project()
    await harness.install(project, "slack", access_token="AT-LOG-SENTINEL")
    key = await harness.key(project, "read", "integrations:write")
    base = f"/v1/projects/{project}/integrations"
    await harness.client.patch(f"{base}/slack/lifecycle",
                               json={"settings": {"webhook_secret": "SETTING-SENTINEL"}},
                               headers={"X-API-Key": key})
    await harness.client.patch(f"{base}/slack/lifecycle", content=b'{"x": "BODY-SENTINEL"',
                               headers={"X-API-Key": key})
    r = await harness.client.post(f"{base}/slack/install-url", headers={"X-API-Key": key})
    session_token = r.json()["data"]["install_url"].rsplit("/", 1)[1]
    await harness.client.get(f"/connect/{session_token}")
    await harness.client.delete(f"{base}/slack", headers={"X-API-Key": "riq_" + "A" * 50})
    text = caplog.text + "".join(str(getattr(rec, "path", "")) for rec in caplog.records)
    for secret in (key, key[4:], "AT-LOG-SENTINEL", "SETTING-SENTINEL", "BODY-SENTINEL",
                   session_token, "A" * 50):
        assert secret not in text, secret
    assert any(getattr(rec, "path", "") == "/connect/[REDACTED]" for rec in caplog.records)


async def test_schemathesis_findings_stay_fixed(harness: Harness) -> None:
    """Each was a 500 or an accepted non-object before the schemathesis suite found it."""
    from broker import store

    async with harness.app.state.sessions() as s:
        _, token = await store.create_service_token(s, "t")
    bearer = {"Authorization": f"Bearer {token}"}
    project = new_project()
    for provider in ({}, [], 5, None):
        r = await harness.client.post(f"/internal/v1/projects/{project}/connect-sessions",
                                      json={"provider": provider}, headers=bearer)
        assert r.status_code == 422, provider
    for query in ("before=%C2%B9", "limit=%C2%B9", "limit=%D9%A3"):  # superscript, Arabic 3
        r = await harness.client.get(f"/internal/v1/projects/{project}/audit?{query}",
                                     headers=bearer)
        assert r.status_code == 422, query
    key = await harness.key(project, "integrations:write")
    r = await harness.client.post(f"/v1/projects/{project}/integrations/postmark/install-url",
                                  content=b"null", headers={"X-API-Key": key,
                                                            "Content-Type": "application/json"})
    assert r.status_code == 422
    r = await harness.client.post(f"/v1/projects/{project}/integrations/postmark/install-url",
                                  headers={"X-API-Key": key})
    assert r.status_code == 200
