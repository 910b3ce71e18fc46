"""One contract test over every registered provider, fed by the provider's documented
responses in ``fixtures/<slug>/``. A new declarative provider needs fixture files, not code.

Fixture files (JSON):
- OAuth providers: ``token.json``, the documented token response; ``expect.json``:
  ``{"access_token", "refresh_token" (or null), "scopes", "expires_in" (or null),
  "metadata"}``, what the broker must keep from it; ``refresh.json`` (optional), the
  documented refresh response, for providers that refresh.
- Key providers with a verification request: ``verify_ok.json`` and ``verify_error.json``,
  ``{"status", "body", "reason"}``: the documented success and refusal (``reason`` is the
  provider's words the connect page must show).
- ``health.json`` (optional): ``{"status", "body"}`` for the health check; default 200 ``{}``.

Every declared URL is moved onto a local recorder (``https://host/path`` ->
``http://127.0.0.1:PORT/host/path``), so each request the broker sends is checked as sent.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from broker import checks, flow, registry
from broker.settings import ClientCredentials
from broker.spec import ApiKeyProvider, OAuth2Provider, Provider, Request, WebhookProvider
from tests.fakes.recorder import Recorder, make_recorder
from tests.fakes.server import serve

FIXTURES = Path(__file__).parent / "fixtures"
PROVIDERS = registry.load()
CLIENT = ClientCredentials("contract-client-id", "contract-client-secret")
REDIRECT = "https://broker.example.test/oauth/{slug}/callback"
OAUTH = sorted(s for s, p in PROVIDERS.items() if isinstance(p, OAuth2Provider))
KEYED = sorted(s for s, p in PROVIDERS.items()
               if isinstance(p, ApiKeyProvider) and p.verify is not None)
CHECKED = sorted(s for s, p in PROVIDERS.items() if p.health_check is not None)


def fixture(slug: str, name: str) -> Any:
    path = FIXTURES / slug / name
    return json.loads(path.read_text()) if path.exists() else None


def inputs(provider: Provider) -> dict[str, str]:
    """Sample inputs: each field's example, or its first choice."""
    return {f.name: f.example or (f.choices[0] if f.choices else "sample")
            for f in provider.fields}


def rehost(url: str, base: str) -> str:
    scheme, rest = url.split("://", 1)
    assert scheme == "https", url
    return f"{base}/{rest}"


def moved(provider: Provider, base: str) -> Provider:
    changes: dict[str, Any] = {}
    if isinstance(provider, OAuth2Provider):
        changes["authorize_url"] = rehost(provider.authorize_url, base)
        changes["token_url"] = rehost(provider.token_url, base)
        if provider.revoke_url:
            changes["revoke_url"] = rehost(provider.revoke_url, base)
    if provider.api_base_url:
        changes["api_base_url"] = rehost(provider.api_base_url, base)
    for attr in ("verify", "health_check"):
        request = getattr(provider, attr, None)
        if isinstance(request, Request):
            changes[attr] = dataclasses.replace(request, url=rehost(request.url, base))
    return dataclasses.replace(provider, **changes)


def path_of(url: str, values: dict[str, str]) -> str:
    return urlsplit(flow.fill(url, values)).path


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[str, Recorder]]:
    app, rec = make_recorder()
    with serve(app) as base:
        yield base, rec


@pytest.fixture
def rec(recorder: tuple[str, Recorder]) -> Iterator[tuple[str, Recorder]]:
    recorder[1].reset()
    yield recorder
    recorder[1].reset()


# -- every provider ------------------------------------------------------------------------

@pytest.mark.parametrize("slug", sorted(PROVIDERS))
def test_declaration(slug: str) -> None:
    provider = PROVIDERS[slug]
    provider.validate()
    assert provider.docs_url.startswith("https://")
    for f in provider.fields:
        if f.pattern:
            assert f.example, f"{slug}.{f.name}: a field with a pattern needs an example"
            assert re.fullmatch(f.pattern, f.example), f"{slug}.{f.name}: example must match"
    [ep] = [ep for ep in entry_points(group=registry.GROUP) if ep.name == slug]
    module = importlib.import_module(ep.module)
    assert module.__doc__ and "https://" in module.__doc__, f"{slug}: docstring with docs URL"
    assert (FIXTURES / slug).is_dir() or isinstance(provider, WebhookProvider) or (
        isinstance(provider, ApiKeyProvider) and provider.verify is None), (
        f"{slug}: add tests/providers/fixtures/{slug}/")


# -- OAuth providers -----------------------------------------------------------------------

@pytest.mark.parametrize("slug", OAUTH)
def test_authorize_url(slug: str) -> None:
    provider = PROVIDERS[slug]
    assert isinstance(provider, OAuth2Provider)
    values = inputs(provider)
    verifier = flow.new_verifier()
    url = flow.authorize_url(provider, CLIENT, redirect_uri=REDIRECT.format(slug=slug),
                             state="s" * 43, verifier=verifier, inputs=values)
    parts = urlsplit(url)
    assert url.startswith(flow.fill(provider.authorize_url, values) + "?")
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q["client_id"] == CLIENT.client_id and q["response_type"] == "code"
    assert q["redirect_uri"] == REDIRECT.format(slug=slug) and q["state"] == "s" * 43
    if provider.scopes:
        assert q["scope"] == provider.scope_separator.join(provider.scopes)
    else:
        assert "scope" not in q
    assert ("code_challenge" in q) is provider.pkce
    if provider.pkce:
        assert q["code_challenge_method"] == "S256"
    for key, value in provider.authorize_params.items():
        assert q[key] == value


def _check_client_auth(provider: OAuth2Provider, request: dict[str, Any]) -> None:
    body = request["body"]
    if provider.client_auth_method == "client_secret_basic":
        expected = base64.b64encode(
            f"{CLIENT.client_id}:{CLIENT.client_secret}".encode()).decode()
        assert request["headers"]["authorization"] == f"Basic {expected}"
        assert "client_secret" not in body
    else:
        assert (body["client_id"], body["client_secret"]) == (
            CLIENT.client_id, CLIENT.client_secret)
    if provider.token_request_format == "json":
        assert "json" in request["content_type"]
    else:
        assert request["content_type"].startswith("application/x-www-form-urlencoded")


@pytest.mark.anyio
@pytest.mark.parametrize("slug", OAUTH)
async def test_code_exchange_and_refresh(slug: str, rec: tuple[str, Recorder]) -> None:
    base, recorder = rec
    provider = moved(PROVIDERS[slug], base)
    assert isinstance(provider, OAuth2Provider)
    token_body, expect = fixture(slug, "token.json"), fixture(slug, "expect.json")
    assert token_body is not None and expect is not None, f"{slug}: token.json, expect.json"
    values = inputs(provider)
    token_path = path_of(provider.token_url, values)
    recorder.serve("POST", token_path, 200, token_body)
    token = await flow.exchange(provider, CLIENT, code="the-code",
                                redirect_uri=REDIRECT.format(slug=slug), verifier="v" * 43,
                                inputs=values, timeout=5)
    assert token.access_token == expect["access_token"]
    assert token.refresh_token == expect["refresh_token"]
    assert list(token.scopes) == expect["scopes"]
    assert token.expires_in == expect["expires_in"]
    assert flow.metadata(provider, token) == expect["metadata"]
    [sent] = recorder.at(token_path)
    assert sent["body"]["grant_type"] == "authorization_code"
    assert sent["body"]["code"] == "the-code"
    assert sent["body"]["redirect_uri"] == REDIRECT.format(slug=slug)
    assert ("code_verifier" in sent["body"]) is provider.pkce
    for key, value in provider.token_params.items():
        assert sent["body"][key] == value
    _check_client_auth(provider, sent)

    refreshed_body = fixture(slug, "refresh.json")
    if refreshed_body is None:
        return
    recorder.reset()
    recorder.serve("POST", token_path, 200, refreshed_body)
    old = expect["refresh_token"] or "an-old-refresh-token"
    new = await flow.refresh(provider, CLIENT, refresh_token=old, inputs=values, timeout=5)
    assert new.access_token == refreshed_body.get("access_token", new.access_token)
    # A rotating provider's new refresh token replaces the old; otherwise the old is kept.
    assert new.refresh_token == (refreshed_body.get("refresh_token") or old)
    [sent] = recorder.at(token_path)
    assert (sent["body"]["grant_type"], sent["body"]["refresh_token"]) == ("refresh_token", old)
    _check_client_auth(provider, sent)


@pytest.mark.anyio
@pytest.mark.parametrize("slug", sorted(s for s in OAUTH if PROVIDERS[s].revoke_url))  # type: ignore[attr-defined]
async def test_revocation(slug: str, rec: tuple[str, Recorder]) -> None:
    base, recorder = rec
    provider = moved(PROVIDERS[slug], base)
    assert isinstance(provider, OAuth2Provider) and provider.revoke_url
    values = inputs(provider)
    path = path_of(provider.revoke_url, values)
    recorder.serve("POST", path, 200, fixture(slug, "revoke.json") or {})
    async with httpx2.AsyncClient(trust_env=False) as http:
        assert await flow.revoke(http, provider, CLIENT, token="tok-to-revoke",
                                 hint="refresh_token", inputs=values)
    [sent] = recorder.at(path)
    if provider.revoke_style == "bearer":
        assert sent["headers"]["authorization"] == "Bearer tok-to-revoke"
    else:
        assert sent["body"]["token"] == "tok-to-revoke"
        assert sent["body"]["token_type_hint"] == "refresh_token"


# -- health checks and key verification ----------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("slug", CHECKED)
async def test_health_check_request(slug: str, rec: tuple[str, Recorder]) -> None:
    base, recorder = rec
    provider = moved(PROVIDERS[slug], base)
    assert provider.health_check is not None
    values = {**inputs(provider), "access_token": "health-token"}
    for f in provider.fields:
        if f.secret:
            values[f.name] = "health-secret"
    answer = fixture(slug, "health.json") or {"status": 200, "body": {}}
    path = path_of(provider.health_check.url, values)
    recorder.serve(provider.health_check.method, path, answer["status"], answer["body"])
    async with httpx2.AsyncClient(trust_env=False) as http:
        await checks.run(http, provider, provider.health_check, values)
    [sent] = recorder.at(path)
    assert sent["method"] == provider.health_check.method
    headers, auth = checks.presentation(provider, values)
    for name, value in headers.items():
        assert sent["headers"][name.lower()] == value
    if auth:
        expected = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        assert sent["headers"]["authorization"] == f"Basic {expected}"
    for name, value in provider.health_check.headers.items():
        assert sent["headers"][name.lower()] == value


@pytest.mark.anyio
@pytest.mark.parametrize("slug", KEYED)
async def test_key_verification(slug: str, rec: tuple[str, Recorder]) -> None:
    base, recorder = rec
    provider = moved(PROVIDERS[slug], base)
    assert isinstance(provider, ApiKeyProvider) and provider.verify is not None
    good, bad = fixture(slug, "verify_ok.json"), fixture(slug, "verify_error.json")
    assert good and bad, f"{slug}: verify_ok.json and verify_error.json"
    values = inputs(provider)
    path = path_of(provider.verify.url, values)
    async with httpx2.AsyncClient(trust_env=False) as http:
        recorder.serve(provider.verify.method, path, good["status"], good["body"])
        await checks.verify(http, provider, values)
        recorder.serve(provider.verify.method, path, bad["status"], bad["body"])
        with pytest.raises(checks.Rejected) as refused:
            await checks.verify(http, provider, values)
    assert str(refused.value) == bad["reason"]
    assert len(recorder.at(path)) == 2
