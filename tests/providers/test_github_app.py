"""GitHub App: an installation_id from the callback is linked only once the user's own token
shows it (GET /user/installations); a spoofed one refuses the install."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from broker.spec import CallbackError, Connected, TokenResponse
from providers.github_app import confirm_installation
from tests.fakes.recorder import Recorder, make_recorder
from tests.fakes.server import serve

pytestmark = pytest.mark.anyio

INSTALLATIONS = {  # the documented shape, trimmed
    "total_count": 2,
    "installations": [
        {"id": 1, "account": {"login": "octocat", "id": 1, "type": "User"},
         "app_id": 1, "target_type": "User", "repository_selection": "all"},
        {"id": 25381, "account": {"login": "octo-org", "id": 2, "type": "Organization"},
         "app_id": 1, "target_type": "Organization", "repository_selection": "selected"},
    ],
}


@pytest.fixture(scope="module")
def github() -> Iterator[tuple[str, Recorder]]:
    app, recorder = make_recorder()
    with serve(app) as base:
        yield base, recorder


async def confirm(github: tuple[str, Recorder], query: list[tuple[str, str]],
                  status: int = 200, body: Any = INSTALLATIONS) -> Any:
    base, recorder = github
    recorder.reset()
    recorder.serve("GET", "/user/installations", status, body)
    async with httpx2.AsyncClient(base_url=base, trust_env=False,
                                  headers={"Authorization": "Bearer ghu_user"}) as http:
        return await confirm_installation(Connected(
            token=TokenResponse(access_token="ghu_user"), query=query, inputs={}, http=http))


async def test_a_visible_installation_is_linked(github: tuple[str, Recorder]) -> None:
    metadata = await confirm(github, [("code", "c"), ("installation_id", "25381"),
                                      ("setup_action", "install")])
    assert metadata == {"installation_id": 25381, "account": "octo-org",
                        "account_type": "Organization"}
    [sent] = github[1].requests
    assert sent["headers"]["authorization"] == "Bearer ghu_user"
    assert sent["headers"]["x-github-api-version"] == "2022-11-28"


@pytest.mark.parametrize("query", [
    [("installation_id", "999")],                 # someone else's installation
    [("installation_id", "25381x")],
    [("installation_id", "1"), ("installation_id", "25381")],
])
async def test_a_spoofed_installation_is_refused(github: tuple[str, Recorder],
                                                 query: list[tuple[str, str]]) -> None:
    with pytest.raises(CallbackError):
        await confirm(github, query)


async def test_github_refusing_the_lookup_refuses_the_install(
        github: tuple[str, Recorder]) -> None:
    with pytest.raises(CallbackError):
        await confirm(github, [("installation_id", "1")], status=401,
                      body={"message": "Bad credentials"})


async def test_plain_authorization_links_nothing(github: tuple[str, Recorder]) -> None:
    assert await confirm(github, [("code", "c")]) == {}
    assert github[1].requests == []
