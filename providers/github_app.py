"""GitHub App: installation, with the user's authorization during installation.

https://docs.github.com/en/apps/creating-github-apps/registering-a-github-app/about-the-setup-url
https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-user-access-token-for-a-github-app
https://docs.github.com/en/rest/apps/installations#list-app-installations-accessible-to-the-user-access-token

Operators point ``authorize_url`` at their app's install page in the providers file
(``https://github.com/apps/<app-slug>/installations/new``), with "Request user authorization
(OAuth) during installation" on: GitHub then calls back with ``code``, ``state`` and the
``installation_id``. Without an override the user only authorizes the app.
"""

from collections.abc import Mapping
from typing import Any

from broker.spec import Action, CallbackError, Connected, Hooks, OAuth2Provider, Request

API_VERSION = "2022-11-28"
MAX_PAGES = 10


async def confirm_installation(connected: Connected) -> Mapping[str, Any]:
    # "Bad actors can hit this URL with a spoofed installation_id": link an installation only
    # if the user who just authorized can see it (GET /user/installations with their token).
    given = [v for k, v in connected.query if k == "installation_id"]
    if not given:
        return {}
    if len(given) != 1 or not given[0].isdigit():
        raise CallbackError("the installation id is malformed")
    wanted = int(given[0])
    for page in range(1, MAX_PAGES + 1):
        response = await connected.http.get(
            "/user/installations", params={"per_page": 100, "page": page},
            headers={"Accept": "application/vnd.github+json",
                     "X-GitHub-Api-Version": API_VERSION})
        if response.status_code != 200:
            raise CallbackError("the installation could not be confirmed")
        installations = response.json().get("installations", [])
        for installation in installations:
            if installation.get("id") == wanted:
                account = installation.get("account") or {}
                return {"installation_id": wanted, "account": account.get("login"),
                        "account_type": account.get("type")}
        if len(installations) < 100:
            break
    raise CallbackError("this user cannot see that installation")


provider = OAuth2Provider(
    slug="github-app",
    name="GitHub App",
    category="developer-tools",
    description="Repositories an organization installs the product's GitHub App on.",
    docs_url="https://docs.github.com/en/apps/creating-github-apps/registering-a-github-app/about-the-setup-url",
    authorize_url="https://github.com/login/oauth/authorize",
    token_url="https://github.com/login/oauth/access_token",
    api_base_url="https://api.github.com",
    # Permissions come from the app's settings, not from scopes.
    pkce=True,
    client_auth_method="client_secret_post",
    hooks=Hooks(after_connect=confirm_installation),
    # The confirmed installation is the account; another one is a new connection, not a swap.
    account_id="installation_id",
    health_check=Request(url="https://api.github.com/user",
                         headers={"Accept": "application/vnd.github+json",
                                  "X-GitHub-Api-Version": API_VERSION}),
    actions=(
        Action(name="repos.read", description="Read repositories the app is installed on."),
        Action(name="issues.create", description="Open an issue."),
        Action(name="pulls.read", description="Read pull requests."),
    ),
)
