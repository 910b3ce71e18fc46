"""GitLab (gitlab.com): OAuth 2.0 authorization code with PKCE.

https://docs.gitlab.com/api/oauth2/
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="gitlab",
    name="GitLab",
    category="developer-tools",
    description="Projects, issues and merge requests on gitlab.com.",
    docs_url="https://docs.gitlab.com/api/oauth2/",
    authorize_url="https://gitlab.com/oauth/authorize",
    token_url="https://gitlab.com/oauth/token",
    # RFC 7009 with client_id/client_secret in the body.
    revoke_url="https://gitlab.com/oauth/revoke",
    revoke_style="rfc7009",
    # "api" is the narrowest scope that can write issues and comments.
    scopes=("api",),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # Access tokens last 2 h; each refresh returns a new refresh token.
    health_check=Request(url="https://gitlab.com/api/v4/user"),
    actions=(
        Action(name="issues.read", description="Read issues and their comments."),
        Action(name="issues.create", description="Open an issue."),
        Action(name="notes.create", description="Comment on an issue or merge request."),
        Action(name="merge_requests.read", description="Read merge requests."),
    ),
)
