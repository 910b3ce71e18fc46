"""No token, code, state, verifier, key or secret reaches a log line, whatever the level:
the redaction layer of broker.logs, then a sentinel sweep through every flow at DEBUG with
the library loggers left wide open."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest

from broker import logs
from broker.crypto import KeyRing
from broker.settings import Settings
from tests.conftest import new_project
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import CLIENT_SECRET, POSTMARK_TOKEN, FakeState
from tests.test_connect import Flow, _approved_callback, flow_settings, make_flow  # noqa: F401
from tests.test_credentials import installed, service_token


@pytest.mark.parametrize(("line", "secret"), [
    ("GET /oauth/acme/callback?code=C0DE-SENTINEL&state=ST4TE-SENTINEL", "SENTINEL"),
    ('{"access_token": "AT-SENTINEL", "token_type": "bearer"}', "AT-SENTINEL"),
    ("{'refresh_token': 'RT-SENTINEL'}", "RT-SENTINEL"),
    ("Authorization: Bearer AT-SENTINEL-1", "AT-SENTINEL"),
    ("Authorization: Basic ZmFrZTpTRU5USU5FTA==", "ZmFrZTpTRU5USU5FTA"),
    ("grant_type=authorization_code&client_secret=CS-SENTINEL&code_verifier=V-SENTINEL",
     "SENTINEL"),
    ("X-API-Key: riq_abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghijklmnop"),
    ("service token rst_abcdefghijklmnopqrstuvwxyz0123 used", "abcdefghijklmnop"),
    ('X-Postmark-Server-Token="11111111-2222-3333-4444-555555555555"', "11111111-2222"),
    ("password: hunter2-SENTINEL", "hunter2"),
])
def test_redaction(line: str, secret: str) -> None:
    redacted = logs.redact(line)
    assert secret not in redacted and "[REDACTED]" in redacted


@pytest.mark.parametrize("line", [
    '{"method": "GET", "path": "/v1/projects/prj_1/integrations", "status": 200}',
    "refresh failed (server_error); 3 failures",
])
def test_ordinary_lines_are_kept(line: str) -> None:
    assert logs.redact(line) == line


@pytest.fixture
def wide_open_debug() -> Iterator[io.StringIO]:
    """broker's JSON logging at DEBUG, then every capped library opened to DEBUG too: the
    redaction layer alone must hold. Yields what the handler wrote."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level,
             {n: logging.getLogger(n).level for n in logs.CAPPED_LOGGERS})
    logs.configure("DEBUG")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    for name in logs.CAPPED_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger("uvicorn.access").disabled = False


@pytest.fixture
async def f(flow_settings: Settings, ring: KeyRing,  # noqa: F811
            fakes: tuple[str, FakeState]) -> AsyncIterator[Flow]:
    async for value in make_flow(flow_settings, ring, fakes):
        yield value


@pytest.mark.anyio
async def test_sentinel_sweep_through_every_flow(
        f: Flow, wide_open_debug: io.StringIO) -> None:
    # Install (authorize, callback, code exchange), read, refresh, key verification
    # (good and bad), disconnect with revocation.
    project = new_project()
    callback = await _approved_callback(f, project)
    await f.get(callback)
    api_project, _ = await installed(f, expires_in=timedelta(seconds=-1))
    token = await service_token(f)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"/internal/v1/projects/{api_project}/integrations/acme"
    assert (await f.browser.get(f"{base}/credentials", headers=headers)).status_code == 200
    postmark = new_project()
    page = await f.get(await f.install_url(postmark, "postmark"))
    action = page.text.split("action='", 1)[1].split("'", 1)[0]
    await f.browser.post(action, data={"server_token": "99999999-2222-3333-4444-555555555555"})
    await f.browser.post(action, data={"server_token": POSTMARK_TOKEN})
    await f.browser.delete(f"{base}?revoke=true", headers=headers)
    key = await f.key(project)
    await f.browser.get(f"/v1/projects/{project}/integrations", headers={"X-API-Key": key})

    out = wide_open_debug.getvalue()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(lines) > 20, "the sweep captured no logging"
    secrets = {CLIENT_SECRET, POSTMARK_TOKEN, token, token[4:], key, key[4:],
               "99999999-2222-3333-4444-555555555555", "rt-seed", "at-seed"}
    secrets |= set(f.fakes.access_tokens) | set(f.fakes.refresh_tokens) | set(f.fakes.codes)
    for request in f.fakes.authorize_requests:
        secrets.add(request["state"])  # (the code challenge is public: it is in the URL)
    for request in f.fakes.token_requests:
        secrets |= {request["body"].get("code_verifier", ""), request["body"].get("code", "")}
    secrets.discard("")
    assert len(secrets) > 12
    leaked = sorted(s for s in secrets if s in out)
    assert not leaked, [line for line in out.splitlines() if any(x in line for x in leaked)][:3]
