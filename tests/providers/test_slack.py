"""Slack's parse_token hook on the documented oauth.v2.access shapes: errors as HTTP 200 with
``ok: false``, the bot token at top level with ``token_type: "bot"``, the user token under
``authed_user`` when only ``user_scope`` was requested, and rotating tokens; and the health
check, which must treat ``ok: false`` as a refusal."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from broker import checks, flow
from broker.settings import ClientCredentials
from broker.spec import TokenError
from providers.slack import parse_token, provider
from tests.fakes.recorder import Recorder, make_recorder
from tests.fakes.server import serve

FIXTURES = Path(__file__).parent / "fixtures" / "slack"
DOCUMENTED = json.loads((FIXTURES / "token.json").read_text())
ROTATED = json.loads((FIXTURES / "refresh.json").read_text())
# A user_scope-only install: no top-level access_token, the user token under authed_user.
USER_ONLY = {
    "ok": True,
    "app_id": "A0KRD7HC3",
    "authed_user": {"id": "U1234", "scope": "search:read,chat:write",
                    "access_token": "xoxp-1234-5678-91011-00e4dd8f0bc5b0c3a7f8b1e2d4c6a9f0",
                    "token_type": "user"},
    "team": {"id": "T9TK3CUKW", "name": "Slack Softball Team"},
    "enterprise": None,
    "is_enterprise_install": False,
}


def test_bot_token_is_accepted_and_normalised() -> None:
    parsed = parse_token(DOCUMENTED)
    assert parsed.access_token == DOCUMENTED["access_token"]
    assert parsed.token_type == "bearer"
    assert parsed.scopes == ("channels:read", "chat:write", "users:read")
    assert parsed.refresh_token is None and parsed.expires_in is None
    assert parsed.raw is DOCUMENTED  # metadata paths (team.id, ...) read the whole answer


def test_user_token_when_only_user_scope_was_requested() -> None:
    parsed = parse_token(USER_ONLY)
    assert parsed.access_token == USER_ONLY["authed_user"]["access_token"]
    assert parsed.token_type == "bearer"
    assert parsed.scopes == ("search:read", "chat:write")
    assert flow.metadata(provider, parsed)["authed_user.id"] == "U1234"


def test_rotating_bot_token_keeps_expiry_and_refresh_token() -> None:
    parsed = parse_token(ROTATED)
    assert parsed.access_token == ROTATED["access_token"]
    assert parsed.refresh_token == ROTATED["refresh_token"]
    assert parsed.expires_in == 43200


def test_rotating_user_token_under_authed_user() -> None:
    user = {**USER_ONLY["authed_user"], "expires_in": 43200,
            "refresh_token": "xoxe-1-My0xLTE3NjUzNjcyNDgxLXVzZXItcmVmcmVzaA"}
    parsed = parse_token({**USER_ONLY, "authed_user": user})
    assert parsed.refresh_token == user["refresh_token"] and parsed.expires_in == 43200


@pytest.mark.parametrize("code", ["invalid_code", "bad_redirect_uri", "invalid_refresh_token"])
def test_ok_false_on_http_200_is_a_token_error_with_slacks_code(code: str) -> None:
    with pytest.raises(TokenError) as refused:
        parse_token({"ok": False, "error": code})
    assert refused.value.code == code


def test_ok_false_without_an_error_code() -> None:
    with pytest.raises(TokenError) as refused:
        parse_token({"ok": False})
    assert refused.value.code == "bad_response"


def test_missing_ok_is_not_success() -> None:
    with pytest.raises(TokenError):
        parse_token({k: v for k, v in DOCUMENTED.items() if k != "ok"})


@pytest.mark.parametrize("answer", [
    {"ok": True, "app_id": "A0KRD7HC3"},
    {"ok": True, "access_token": ""},
    {"ok": True, "authed_user": {"id": "U1234"}},
])
def test_no_token_at_all_is_refused(answer: dict[str, Any]) -> None:
    with pytest.raises(TokenError):
        parse_token(answer)


@pytest.mark.parametrize("kind", ["app", "mac", 7])
def test_other_token_types_are_refused(kind: object) -> None:
    with pytest.raises(TokenError):
        parse_token({**DOCUMENTED, "token_type": kind})


# -- over HTTP -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[str, Recorder]]:
    app, rec = make_recorder()
    with serve(app) as base:
        yield base, rec


@pytest.mark.anyio
async def test_exchange_refused_with_http_200(recorder: tuple[str, Recorder]) -> None:
    base, rec = recorder
    rec.reset()
    rec.serve("POST", "/oauth.v2.access", 200, {"ok": False, "error": "invalid_code"})
    moved = dataclasses.replace(provider, token_url=f"{base}/oauth.v2.access")
    with pytest.raises(flow.ExchangeError) as refused:
        await flow.exchange(moved, ClientCredentials("id", "secret"), code="spent",
                            redirect_uri="https://broker.example.test/cb", verifier=None,
                            inputs={}, timeout=5)
    assert refused.value.code == "invalid_code"


@pytest.mark.anyio
async def test_health_check_refuses_ok_false(recorder: tuple[str, Recorder]) -> None:
    base, rec = recorder
    rec.reset()
    rec.serve("POST", "/auth.test", 200, {"ok": False, "error": "invalid_auth"})
    assert provider.health_check is not None
    check = dataclasses.replace(provider.health_check, url=f"{base}/auth.test")
    async with httpx2.AsyncClient(trust_env=False) as http:
        with pytest.raises(checks.Rejected):
            await checks.run(http, provider, check, {"access_token": "xoxb-dead"})
    [sent] = rec.at("/auth.test")
    assert sent["headers"]["authorization"] == "Bearer xoxb-dead"
