"""Slack: OAuth 2.0 (v2 install flow).

https://docs.slack.dev/authentication/installing-with-oauth
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="slack",
    name="Slack",
    category="communication",
    description="Read and post messages in a Slack workspace.",
    docs_url="https://docs.slack.dev/authentication/installing-with-oauth",
    authorize_url="https://slack.com/oauth/v2/authorize",
    token_url="https://slack.com/api/oauth.v2.access",
    revoke_url="https://slack.com/api/auth.revoke",
    scopes=("channels:read", "chat:write", "users:read"),
    scope_separator=",",
    # PKCE turns a Slack app into a public client for good; a confidential broker must not.
    pkce=False,
    client_auth_method="client_secret_basic",
    token_metadata=("team.id", "team.name", "bot_user_id", "app_id", "enterprise.id"),
    health_check=Request(method="POST", url="https://slack.com/api/auth.test"),
    actions=(
        Action(name="chat.write", description="Post messages as the app."),
        Action(name="channels.read", description="List public channels."),
        Action(name="users.read", description="Look up workspace members."),
    ),
)
