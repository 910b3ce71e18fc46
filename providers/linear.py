"""Linear: OAuth 2.0.

https://linear.app/developers/oauth-2-0-authentication
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="linear",
    name="Linear",
    category="project-management",
    description="Read, create and comment on issues in a Linear workspace.",
    docs_url="https://linear.app/developers/oauth-2-0-authentication",
    authorize_url="https://linear.app/oauth/authorize",
    # 24 h access tokens with rotating refresh tokens since 2026-04-01 (all OAuth apps).
    token_url="https://api.linear.app/oauth/token",
    revoke_url="https://api.linear.app/oauth/revoke",
    revoke_style="bearer",
    scopes=("read", "write"),
    scope_separator=",",
    pkce=True,
    client_auth_method="client_secret_post",
    # Show the consent screen every time, so a user can connect another workspace.
    authorize_params={"prompt": "consent"},
    health_check=Request(method="POST", url="https://api.linear.app/graphql",
                         json={"query": "{ viewer { id } }"}),
    actions=(
        Action(name="issues.read", description="Read issues, projects and teams."),
        Action(name="issues.create", description="Create an issue."),
        Action(name="issues.update", description="Update an issue's state or assignee."),
        Action(name="comments.create", description="Comment on an issue."),
    ),
)
