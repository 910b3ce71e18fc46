"""GitHub: OAuth 2.0 (OAuth app, web application flow).

https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps
"""

from broker.spec import Action, OAuth2Provider, Request

# Pins the REST API's behaviour for the health check.
API_VERSION = "2022-11-28"

provider = OAuth2Provider(
    slug="github",
    name="GitHub",
    category="developer-tools",
    description="Repositories, issues and pull requests of a GitHub user.",
    docs_url="https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps",
    authorize_url="https://github.com/login/oauth/authorize",
    # Answers form-encoded unless the request sends Accept: application/json, which Authlib
    # always sends (tests/providers/test_github.py checks it). OAuth app tokens do not expire
    # and come without a refresh token.
    token_url="https://github.com/login/oauth/access_token",
    # Revocation is DELETE /applications/{client_id}/token with Basic client credentials and
    # a JSON body: neither revoke_style, so it is left out.
    scopes=("repo",),  # private repositories' issues and pull requests need "repo"
    scope_separator=" ",
    pkce=True,  # S256, supported since 2025-07-14
    client_auth_method="client_secret_post",
    health_check=Request(url="https://api.github.com/user",
                         headers={"Accept": "application/vnd.github+json",
                                  "X-GitHub-Api-Version": API_VERSION}),
    actions=(
        Action(name="repos.read", description="Read repositories and their contents."),
        Action(name="issues.read", description="Read issues and comments."),
        Action(name="issues.create", description="Open an issue."),
        Action(name="pulls.read", description="Read pull requests."),
    ),
)
