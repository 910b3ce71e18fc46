"""Checklist section H, logging hygiene (LG-01 ... LG-04): no code, state, verifier, token,
client secret, API key or key-encryption key reaches a log record, a log line or an exception
message, whatever the log level."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import secrets
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from sqlalchemy import update

from broker import flow, logs, rotation, store
from broker.crypto import Key, KeyRing
from broker.db import create_engine, utcnow
from broker.models import Credential
from broker.settings import Settings
from tests.conftest import Database, new_project
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import CLIENT_ID, CLIENT_SECRET, FakeState
from tests.fakes.server import running
from tests.security.sentinels import (
    LOUD_LOGGERS,
    MARKER,
    Capture,
    Captured,
    basic_forms,
    leaks,
)
from tests.test_connect import APP, PUBLIC, Flow, make_flow, providers_toml, query

SECRET = f"{MARKER}-client-secret-{secrets.token_hex(8)}"
KEKS = {"klg1": f"{MARKER}-kek-one-0123456789abc".encode(),
        "klg2": f"{MARKER}-kek-two-0123456789abc".encode()}
POSTMARK = "5e171e15-0000-4000-8000-5e171e150001"  # the provider insists on a UUID
POSTMARK_WRONG = "5e171e15-0000-4000-8000-5e171e150002"


# -- LG-01: the sentinel sweep ---------------------------------------------------------------

@dataclass
class Sweep:
    capture: Capture
    printed: io.StringIO  # what the broker's own JSON handler wrote


def _not_the_brokers(c: Captured) -> bool:
    # The fake provider's own server logs what a real provider would log on its side, and
    # the test's browser logs the URLs it visits (a callback carries code and state by
    # design): neither is the broker. The broker's outbound calls are made while it serves
    # a request, so they carry a request id and are kept.
    return c.record.threadName == "fake-providers" or (
        c.record.name.startswith(("httpx2", "httpcore2")) and c.request_id is None)


@contextlib.contextmanager
def debug_capture(ignore: Callable[[Captured], bool] = _not_the_brokers) -> Iterator[Sweep]:
    """The broker's logging at DEBUG (``logs.configure``), then every library logger opened
    to DEBUG as well, as if an operator turned everything up: redaction must hold on its
    own. Call it after anything that configures logging itself."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level,
             {n: logging.getLogger(n).level for n in LOUD_LOGGERS},
             logging.getLogger("uvicorn.access").disabled, logging.getLogRecordFactory())
    logs.configure("DEBUG")
    printed = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(printed)
    capture = Capture.install(ignore=ignore)
    try:
        yield Sweep(capture, printed)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger("uvicorn.access").disabled = saved[3]
        logging.setLogRecordFactory(saved[4])


@pytest.fixture
def sweep() -> Iterator[Sweep]:
    with debug_capture() as value:
        yield value


def printed_lines(sweep: Sweep) -> list[dict[str, Any]]:
    """The JSON lines the broker's handler wrote, without the test's own HTTP client."""
    return [line for line in map(json.loads, sweep.printed.getvalue().splitlines())
            if not (line["logger"].startswith(("httpx2", "httpcore2"))
                    and line["request_id"] is None)]


def all_leaks(sweep: Sweep, seen: dict[str, Any]) -> list[str]:
    return leaks(sweep.capture.texts(), seen) + leaks(
        [(f"printed {line['logger']}", json.dumps(line)) for line in printed_lines(sweep)],
        seen)


@pytest.fixture
def sweep_ring() -> KeyRing:
    return KeyRing([Key(k, v) for k, v in KEKS.items()], "klg1")


@pytest.fixture
async def sf(own_database: Database, tmp_path: Path, fakes: tuple[str, FakeState],
             sweep_ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Flow]:
    """A flow whose every secret carries the marker: client secret, codes and tokens minted
    by the fake, the broker's state and PKCE verifier."""
    fakes[1].client_secret = SECRET
    fakes[1].mint_marker = MARKER
    fakes[1].postmark_tokens = {POSTMARK}
    path = tmp_path / "providers.toml"
    path.write_text(providers_toml(fakes[0]).replace(CLIENT_SECRET, SECRET))
    settings = Settings(database_url=own_database.url, public_url=PUBLIC, providers_file=path,
                        return_url_allowlist=(APP,), provider_timeout=3.0)
    monkeypatch.setattr(flow, "new_state", lambda: f"{MARKER}st{secrets.token_urlsafe(32)}")
    monkeypatch.setattr(flow, "new_verifier", lambda: f"{MARKER}v{secrets.token_urlsafe(64)}")
    async for value in make_flow(settings, sweep_ring, fakes):
        yield value


async def _seed(f: Flow, *, expires_in: timedelta) -> tuple[str, str, str]:
    """An acme integration with marked tokens the fake knows; (project, access, refresh)."""
    project = new_project()
    access = f"at-{MARKER}seed{secrets.token_urlsafe(16)}"
    refresh = f"rt-{MARKER}seed{secrets.token_urlsafe(16)}"
    f.fakes.refresh_tokens[refresh] = "read write"
    async with f.app.state.sessions() as s:
        await store.ensure_project(s, project)
        integration = await store.upsert_integration(s, project_id=project, provider="acme",
                                                     setup_type="oauth")
        await store.write_credential(
            s, f.app.state.ring, integration,
            store.Secrets(access_token=access, refresh_token=refresh),
            token_type="bearer", scopes=["read", "write"], expires_at=utcnow() + expires_in)
        await s.commit()
    return project, access, refresh


@pytest.mark.anyio
async def test_lg_01_sentinel_sweep_through_every_flow_at_debug(
        sf: Flow, sweep: Sweep, own_database: Database, sweep_ring: KeyRing) -> None:
    f, seen = sf, {"client secret": SECRET, **{f"KEK {k}": v for k, v in KEKS.items()}}
    seen["client secret (Basic)"] = basic_forms(CLIENT_ID, SECRET)
    async with f.app.state.sessions() as s:
        service = (await store.create_service_token(s, "main-api"))[1]
    internal = {"Authorization": f"Bearer {service}"}
    seen["service token"] = service

    # Install: connect link -> provider -> callback -> code exchange.
    f.fakes.auto_approve = True
    installed = new_project()
    link = await f.install_url(installed, "acme")
    seen["connect link"] = link.rsplit("/", 1)[1]
    start = await f.get(link)
    callback = (await f.get(start.headers["location"])).headers["location"]
    done = await f.get(callback)
    assert done.headers["location"] == f"{APP}/done?status=success&provider=acme"
    for cookie in f.browser.cookies.jar:
        seen[f"cookie {cookie.name}"] = cookie.value or ""
    # Install refused by the person at the provider.
    refused = new_project()
    state = query((await f.to_provider(refused, "acme")).headers["location"])["state"][0]
    denied = await f.get(f"{PUBLIC}/oauth/acme/callback?error=access_denied&state={state}")
    assert denied.headers["location"].endswith("status=error&provider=acme&error=access_denied")

    # Refresh: success, invalid_grant, 5xx.
    refreshed, *tokens = await _seed(f, expires_in=timedelta(seconds=-1))
    url = "/internal/v1/projects/{}/integrations/acme/credentials"
    ok = await f.browser.get(url.format(refreshed), headers=internal)
    assert ok.status_code == 200 and ok.json()["data"]["access_token"] in f.fakes.access_tokens
    f.fakes.token_mode = "invalid_grant"
    gone, *more = await _seed(f, expires_in=timedelta(seconds=-1))
    assert (await f.browser.get(url.format(gone), headers=internal)).status_code == 409
    f.fakes.token_mode = "server_error"
    failing, *yet_more = await _seed(f, expires_in=timedelta(seconds=-1))
    assert (await f.browser.get(url.format(failing), headers=internal)).status_code == 503
    f.fakes.token_mode = "ok"
    tokens += more + yet_more

    # Disconnect with revocation at the provider.
    r = await f.browser.delete(f"/internal/v1/projects/{installed}/integrations/acme"
                               "?revoke=true", headers=internal)
    assert r.status_code == 200, r.text
    assert len(f.fakes.revoke_requests) == 1

    # An API-key provider (a wrong key refused, then the right one) and a project API key.
    postmark = new_project()
    page = await f.get(await f.install_url(postmark, "postmark"))
    action = page.text.split("action='", 1)[1].split("'", 1)[0]
    assert (await f.browser.post(action, data={"server_token": POSTMARK_WRONG})
            ).status_code == 422
    assert (await f.browser.post(action, data={"server_token": POSTMARK})).status_code == 302
    key = await f.key(postmark)
    seen["API key"] = key
    listed = await f.browser.get(f"/v1/projects/{postmark}/integrations",
                                 headers={"X-API-Key": key})
    assert listed.status_code == 200

    # Key rotation (rewrap onto klg2) with one row that does not decrypt; then a read of it.
    broken, *last = await _seed(f, expires_in=timedelta(hours=1))
    tokens += last
    engine = create_engine(own_database.url)
    try:
        async with engine.begin() as conn:
            [integration] = await f.integrations(broken)
            await conn.execute(update(Credential).where(
                Credential.integration_id == integration.id).values(
                    data_key_ct=bytes([1, 4]) + b"klg1" + bytes(12 + 48)))
        moved = KeyRing([Key(k, v) for k, v in KEKS.items()], "klg2")
        progress = await rotation.rewrap(engine, moved)
    finally:
        await engine.dispose()
    assert progress.succeeded >= 3 and progress.failed == 1
    unreadable = await f.browser.get(url.format(broken), headers=internal)
    assert unreadable.json()["error"]["code"] == "credential_unreadable", unreadable.text

    # Everything the fake minted or saw, and what the broker generated.
    minted = [*f.fakes.codes, *f.fakes.access_tokens, *f.fakes.refresh_tokens, *tokens]
    for request in f.fakes.token_requests + f.fakes.revoke_requests:
        minted += [v for k, v in request["body"].items()
                   if k in ("code", "code_verifier", "refresh_token", "token")]
    minted += [q["state"] for q in f.fakes.authorize_requests]
    assert all(MARKER in value for value in minted) and len(minted) > 12
    seen |= {f"minted {i}": value for i, value in enumerate(minted)}
    seen["postmark token"] = POSTMARK
    seen["wrong postmark token"] = POSTMARK_WRONG

    assert len(sweep.capture.kept()) > 100, "the sweep captured no logging"
    assert len(printed_lines(sweep)) > 20
    found = all_leaks(sweep, seen)
    assert not found, "\n".join(found[:10])


# Moved from tests/test_logging.py: the redaction layer (logs.redact) on its own.
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
def test_lg_01_redaction_masks_each_shape(line: str, secret: str) -> None:
    redacted = logs.redact(line)
    assert secret not in redacted and "[REDACTED]" in redacted


@pytest.mark.parametrize("line", [
    '{"method": "GET", "path": "/v1/projects/prj_1/integrations", "status": 200}',
    "refresh failed (server_error); 3 failures",
    "receive_response_headers.complete return_value=(b'HTTP/1.1', 200, b'OK', "
    "[(b'content-type', b'application/json'), (b'content-length', b'42')])",
])
def test_lg_01_ordinary_lines_are_kept(line: str) -> None:
    assert logs.redact(line) == line


def test_lg_01_outbound_http_log_filter_masks_headers_and_form_fields() -> None:
    # What an HTTP client logs at DEBUG, in the shapes httpcore/hpack (byte pairs), httpx
    # (dicts) and a raw request dump use, through the libraries' own loggers: every record
    # that reaches the root logger is masked where it is made, not only the printed line.
    value = {name: f"{MARKER}-{name}-{secrets.token_hex(6)}" for name in (
        "bearer", "cookie1", "cookie2", "shopify", "client_secret", "code", "code_verifier",
        "refresh_token", "access_token")}
    pairs = [(b"Host", b"provider.test"), (b"Authorization", f"Bearer {value['bearer']}".encode()),
             (b"Cookie", f"sid={value['cookie1']}; other={value['cookie2']}".encode()),
             (b"X-Shopify-Access-Token", value["shopify"].encode()),
             (b"Content-Type", b"application/x-www-form-urlencoded")]
    form = "grant_type=refresh_token&" + "&".join(
        f"{k}={value[k]}" for k in ("client_secret", "code", "code_verifier", "refresh_token",
                                    "access_token"))
    as_dict = {k.decode().lower(): v.decode() for k, v in pairs}
    dump = "\r\n".join(f"{k.decode()}: {v.decode()}" for k, v in pairs)
    with debug_capture(ignore=lambda _c: False) as sweep:
        logging.getLogger("httpcore2.http11").debug("send_request_headers.started headers=%r",
                                                    pairs)
        logging.getLogger("hpack.hpack").debug("Encoding %s", pairs)
        logging.getLogger("httpx2").debug("request headers %s body %s", as_dict, form)
        logging.getLogger("authlib").debug("token request\r\n%s\r\n\r\n%s", dump, form)
        logging.getLogger("httpx2").debug("json body %s", json.dumps(
            {k: value[k] for k in ("client_secret", "code", "refresh_token", "access_token")}))

    assert len(sweep.capture.kept()) == 5
    found = leaks([*sweep.capture.texts(), ("printed", sweep.printed.getvalue())],
                  {f"{k} value": v for k, v in value.items()})
    assert not found, "\n".join(found)
    for c in sweep.capture.kept():
        assert "[REDACTED]" in c.record.getMessage()
    kept = sweep.capture.kept()[0].record.getMessage()
    assert "(b'Host', b'provider.test')" in kept
    assert "(b'Content-Type', b'application/x-www-form-urlencoded')" in kept


# -- LG-02: access logs ------------------------------------------------------------------------

def _the_test_client(c: Captured) -> bool:
    return c.record.threadName == "MainThread" and c.record.name.startswith(
        ("httpx2", "httpcore2"))


@pytest.mark.parametrize("uvicorn_access_log", ["as broker serve runs it", "turned on"])
def test_lg_02_callback_code_and_state_are_redacted_in_access_logs(
        own_database: Database, monkeypatch: pytest.MonkeyPatch,
        uvicorn_access_log: str) -> None:
    from broker import cli
    from tests.conftest import ring_json

    settings = Settings(database_url=own_database.url, log_level="DEBUG",
                        keys=ring_json({"klg1": KEKS["klg1"]}, "klg1"),
                        public_url="https://broker.example.test")
    started: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append((app, options)))
    assert cli._serve(settings, "127.0.0.1", 8000, 1) == 0
    [(app, options)] = started
    code, state = f"{MARKER}code{secrets.token_hex(8)}", f"{MARKER}state{secrets.token_hex(8)}"
    access = logging.getLogger("uvicorn.access")
    saved = (access.handlers[:], access.propagate)
    with debug_capture(ignore=_the_test_client) as sweep:
        if uvicorn_access_log == "turned on":  # an operator overriding `broker serve`
            options = {**options, "access_log": True}
            access.disabled, access.propagate, access.handlers[:] = False, True, []
        try:
            with running(app, options) as url, httpx2.Client(trust_env=False) as client:
                r = client.get(f"{url}/oauth/github/callback?code={code}&state={state}")
                assert r.status_code == 400
        finally:
            access.handlers[:], access.propagate = saved

    [line] = [line for line in printed_lines(sweep) if line["logger"] == "broker.access"
              and line.get("path") == "/oauth/github/callback"]
    assert line["query"] == "code=[REDACTED]&state=[REDACTED]" and line["status"] == 400
    uvicorn_lines = [c.record.getMessage() for c in sweep.capture.kept()
                     if c.record.name == "uvicorn.access"]
    if uvicorn_access_log == "turned on":
        [uvicorn_line] = uvicorn_lines
        assert "/oauth/github/callback?code=[REDACTED]&state=[REDACTED]" in uvicorn_line
    else:
        assert uvicorn_lines == []
    found = all_leaks(sweep, {"code": code, "state": state})
    assert not found, "\n".join(found)


# -- LG-03: provider error bodies ----------------------------------------------------------------

BODY_SECRET = f"{MARKER}-echoed-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[str, Any]]:
    from tests.fakes.recorder import make_recorder
    from tests.fakes.server import serve

    app, rec = make_recorder()
    with serve(app) as base:
        yield base, rec


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["exchange", "refresh"])
@pytest.mark.parametrize(("status", "answer", "code", "media"), [
    (400, {"error": "invalid_grant", "error_description": f"token {BODY_SECRET} is revoked",
           "refresh_token": BODY_SECRET}, "invalid_grant", "application/json"),
    (401, {"error": "invalid_client", "client_secret": BODY_SECRET}, "invalid_client",
     "application/json"),
    (500, f"upstream failed: refresh_token={BODY_SECRET}", "bad_response", "text/plain"),
    (503, {"message": f"overloaded, retry {BODY_SECRET}"}, "bad_response", "application/json"),
    (200, f"<html><p>Sign in again, {BODY_SECRET}</p></html>", "bad_response", "text/plain"),
    (200, {"token_type": "bearer", "echo": BODY_SECRET}, "bad_response", "application/json"),
])
async def test_lg_03_token_endpoint_failures_describe_the_body_never_quote_it(
        recorder: tuple[str, Any], sweep: Sweep, call: str, status: int, answer: Any,
        code: str, media: str) -> None:
    from starlette.responses import JSONResponse, PlainTextResponse

    from broker.settings import ClientCredentials
    from providers.github import provider

    base, rec = recorder
    rec.reset()
    rec.serve("POST", "/token", status, answer)
    body = (PlainTextResponse(answer) if isinstance(answer, str) else JSONResponse(answer)).body
    moved = replace(provider, token_url=f"{base}/token")
    client = ClientCredentials("lg03-client", f"{MARKER}-secret")
    with pytest.raises(flow.ExchangeError) as failed:
        if call == "exchange":
            await flow.exchange(moved, client, code=f"{MARKER}-code", verifier=None,
                                redirect_uri="https://broker.example.test/cb", inputs={},
                                timeout=5)
        else:
            await flow.refresh(moved, client, refresh_token=f"{MARKER}-rt", inputs={},
                               timeout=5)
    assert len(rec.at("/token")) == 1
    exc = failed.value
    expected = {"status": status, "content_type": media, "body_bytes": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest()[:16],
                "error": code if code != "bad_response" else None}
    assert exc.code == code and exc.facts == expected
    message = str(exc)
    for fact in (f"HTTP {status}", media, f"{len(body)} bytes", expected["body_sha256"]):
        assert fact in message
    assert code in message or code == "bad_response"
    [logged] = [c.record for c in sweep.capture.kept() if c.record.name == "broker.flow"]
    assert {k: getattr(logged, k) for k in expected} == expected
    texts = [*sweep.capture.texts(), ("exception", message),
             ("exception", "".join(traceback.format_exception(exc)))]
    found = leaks(texts, {"body": BODY_SECRET})
    assert not found, "\n".join(found)


# -- LG-04: representations and tracebacks ------------------------------------------------------

def _every_form(*values: str | bytes) -> dict[str, str | bytes]:
    return {f"secret {i}": v for i, v in enumerate(values)}


def test_lg_04_orm_models_do_not_show_their_columns() -> None:
    from sqlalchemy import JSON, LargeBinary, String

    from broker.db import Base

    secret = f"{MARKER}-column-{secrets.token_hex(6)}"
    shown: list[tuple[str, str]] = []
    mappers = list(Base.registry.mappers)
    assert len(mappers) >= 8
    for mapper in mappers:
        obj = mapper.class_()
        for column in mapper.columns:
            if isinstance(column.type, LargeBinary):
                setattr(obj, mapper.get_property_by_column(column).key, secret.encode())
            elif isinstance(column.type, String):
                setattr(obj, mapper.get_property_by_column(column).key, secret)
            elif isinstance(column.type, JSON) or "JSON" in type(column.type).__name__:
                setattr(obj, mapper.get_property_by_column(column).key, {"token": secret})
        shown += [(mapper.class_.__name__, repr(obj)), (mapper.class_.__name__, str(obj))]
    found = leaks(shown, {"column value": secret})
    assert not found, "\n".join(found)


def test_lg_04_settings_keyring_and_token_objects_mask_secrets() -> None:
    from broker.crypto import RowContext
    from broker.settings import ClientCredentials
    from broker.spec import Callback, Connected, TokenResponse
    from tests.conftest import ring_json

    s = {n: f"{MARKER}-{n}-{secrets.token_hex(6)}" for n in (
        "db", "redis", "client", "previous", "env", "access", "refresh", "field", "raw",
        "query")}
    settings = Settings(
        database_url=f"postgresql://broker:{s['db']}@db.internal/broker",
        redis_url=f"redis://:{s['redis']}@redis.internal:6379/0",
        keys=ring_json(KEKS, "klg1"), key_secrets={"BROKER_KEY_KLG1": s["env"]},
        oauth_clients={"acme": ClientCredentials("acme-id", s["client"], (s["previous"],))})
    ring = KeyRing([Key(k, v) for k, v in KEKS.items()], "klg1")
    token = TokenResponse(access_token=s["access"], refresh_token=s["refresh"],
                          raw={"access_token": s["raw"]})
    objects: list[Any] = [
        settings, settings.oauth_clients["acme"], ring, *(Key(k, v) for k, v in KEKS.items()),
        token,
        store.Secrets(access_token=s["access"], refresh_token=s["refresh"],
                      fields={"api_key": s["field"]}),
        Callback(query=[("code", s["query"])], client_secret=s["client"], inputs={},
                 previous_secrets=(s["previous"],)),
        Connected(token=token, query=[("code", s["query"])], inputs={}, http=None),
        RowContext("prj_1", "acme", "int_1"),
    ]
    shown = [(type(o).__name__, text) for o in objects for text in (repr(o), str(o))]
    assert "acme-id" in repr(settings.oauth_clients["acme"])  # the non-secret part is shown
    assert "klg1" in repr(ring) and "public_url" in repr(settings)
    found = leaks(shown, {**s, **{f"KEK {k}": v for k, v in KEKS.items()}})
    assert not found, "\n".join(found)


@pytest.mark.anyio
async def test_lg_04_a_token_in_a_local_variable_stays_out_of_logged_tracebacks(
        sf: Flow, sweep: Sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    # An unexpected error deep in a refresh, with the refresh token a local variable in
    # every frame on the way: the 500 is logged with its traceback, never the locals.
    async def broken_refresh(*_args: Any, refresh_token: str, **_kwargs: Any) -> Any:
        spent = refresh_token  # noqa: F841 - the local a locals-capturing tracker would show
        raise RuntimeError("the provider client blew up")

    monkeypatch.setattr(flow, "refresh", broken_refresh)
    project, access, refresh = await _seed(sf, expires_in=timedelta(seconds=-1))
    async with sf.app.state.sessions() as s:
        service = (await store.create_service_token(s, "main-api"))[1]
    r = await sf.browser.get(f"/internal/v1/projects/{project}/integrations/acme/credentials",
                             headers={"Authorization": f"Bearer {service}"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    [failed] = [c.record for c in sweep.capture.kept() if c.record.exc_info]
    assert failed.exc_info and isinstance(failed.exc_info[1], RuntimeError)
    assert [line for line in printed_lines(sweep) if "traceback" in line]
    found = all_leaks(sweep, {"access token": access, "refresh token": refresh,
                              "service token": service})
    assert not found, "\n".join(found)


def test_lg_04_nothing_in_the_broker_captures_local_variables() -> None:
    # Tracebacks include locals only when something asks for them: an error tracker's
    # "include locals" switch or traceback's capture_locals. None of that in the broker.
    source = Path(__file__).parents[2] / "broker"
    switches = ("capture_locals", "include_local_variables", "with_locals", "tb_locals",
                "show_locals", "f_locals", "sentry_sdk", "rollbar", "bugsnag")
    used = [(path.name, word) for path in source.rglob("*.py")
            for word in switches if word in path.read_text(encoding="utf-8")]
    assert used == []
