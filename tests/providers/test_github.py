"""GitHub's token endpoint answers ``application/x-www-form-urlencoded`` unless the request
asks for JSON; the broker relies on Authlib sending ``Accept: application/json`` on the code
exchange. Checked against the recorder, as sent."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import flow
from broker.settings import ClientCredentials
from providers.github import provider
from tests.fakes.recorder import Recorder, make_recorder
from tests.fakes.server import serve

FIXTURES = Path(__file__).parent / "fixtures" / "github"
CLIENT = ClientCredentials("Iv1.8a61f9b3a7aba766", "contract-client-secret")
REDIRECT = "https://broker.example.test/oauth/github/callback"


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[str, Recorder]]:
    app, rec = make_recorder()
    with serve(app) as base:
        yield base, rec


@pytest.mark.anyio
async def test_code_exchange_asks_for_json(recorder: tuple[str, Recorder]) -> None:
    base, rec = recorder
    rec.reset()
    body = json.loads((FIXTURES / "token.json").read_text())
    rec.serve("POST", "/github.com/login/oauth/access_token", 200, body)
    moved = dataclasses.replace(
        provider, token_url=f"{base}/github.com/login/oauth/access_token")
    token = await flow.exchange(moved, CLIENT, code="the-code", redirect_uri=REDIRECT,
                                verifier="v" * 43, inputs={}, timeout=5)
    assert token.access_token == body["access_token"]
    [sent] = rec.at("/github.com/login/oauth/access_token")
    assert sent["headers"]["accept"] == "application/json"
    assert sent["content_type"].startswith("application/x-www-form-urlencoded")
    assert sent["body"]["client_id"] == CLIENT.client_id
    assert sent["body"]["code_verifier"] == "v" * 43


@pytest.mark.anyio
async def test_error_in_a_200_is_refused(recorder: tuple[str, Recorder]) -> None:
    # GitHub reports a spent or wrong code as HTTP 200 with an "error" field.
    base, rec = recorder
    rec.reset()
    rec.serve("POST", "/github.com/login/oauth/access_token", 200, {
        "error": "bad_verification_code",
        "error_description": "The code passed is incorrect or expired.",
        "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"})
    moved = dataclasses.replace(
        provider, token_url=f"{base}/github.com/login/oauth/access_token")
    with pytest.raises(flow.ExchangeError) as refused:
        await flow.exchange(moved, CLIENT, code="spent", redirect_uri=REDIRECT,
                            verifier=None, inputs={}, timeout=5)
    assert refused.value.code == "bad_verification_code"
