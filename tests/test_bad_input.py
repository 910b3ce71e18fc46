"""Hostile queries and bodies: a clear 4xx, nothing stored, nothing in the logs that should
not be there. (Hostile path segments: tests/security/test_input_validation.py, IV-02.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from broker import logs
from tests.conftest import Harness, new_project

pytestmark = pytest.mark.anyio


async def test_unknown_query_parameters_are_refused(harness: Harness) -> None:
    project = new_project()
    key = await harness.key(project, "read")
    for query in ("project_id=prj_other", "limit=10", "x=%0d%0a"):
        r = await harness.client.get(f"/v1/projects/{project}/integrations?{query}",
                                     headers={"X-API-Key": key})
        assert r.status_code == 422, query


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
