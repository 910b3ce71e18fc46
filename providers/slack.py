"""Slack: OAuth 2.0 (v2 install flow).

https://docs.slack.dev/authentication/installing-with-oauth
https://docs.slack.dev/reference/methods/oauth.v2.access
"""

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from broker.spec import (
    Action,
    Header,
    Hooks,
    OAuth2Provider,
    Request,
    TokenError,
    TokenResponse,
    standard_token,
)


def parse_token(raw: Mapping[str, Any]) -> TokenResponse:
    # oauth.v2.access answers HTTP 200 even on failure, {"ok": false, "error": "<code>"}; the
    # bot token (xoxb-) is top level with token_type "bot", and an install that asked only
    # for user_scope carries just authed_user {access_token (xoxp-), token_type "user", ...}.
    # With token rotation each has its own expires_in and refresh_token (xoxe-1-).
    # https://docs.slack.dev/reference/methods/oauth.v2.access
    if raw.get("ok") is not True:
        code = str(raw.get("error") or "bad_response")[:64]
        raise TokenError(f"the provider refused: {code}", code)
    user = raw.get("authed_user")
    source: Mapping[str, Any] = raw
    if not raw.get("access_token") and isinstance(user, Mapping):
        source = user
    kind = source.get("token_type", "bot")
    if not isinstance(kind, str) or kind.lower() not in ("bot", "user", "bearer"):
        raise TokenError("the token response is not a bot or user token")
    # Both kinds are sent as Authorization: Bearer; the rest is standard.
    fields = {k: source[k] for k in ("access_token", "refresh_token", "expires_in", "scope")
              if k in source}
    return replace(standard_token({**fields, "token_type": "bearer"}, ","), raw=raw)


provider = OAuth2Provider(
    slug="slack",
    name="Slack",
    category="communication",
    description="Read and post messages in a Slack workspace.",
    docs_url="https://docs.slack.dev/authentication/installing-with-oauth",
    authorize_url="https://slack.com/oauth/v2/authorize",
    token_url="https://slack.com/api/oauth.v2.access",
    # auth.revoke takes the token to revoke as its own bearer credential.
    revoke_url="https://slack.com/api/auth.revoke",
    revoke_style="bearer",
    # Bot scopes only: the actions below are all bot-token calls, and a user_scope would
    # add a second (user) token that TokenResponse cannot carry alongside the bot token.
    scopes=("channels:read", "chat:write", "users:read"),
    scope_separator=",",
    # PKCE turns a Slack app into a public client for good; a confidential broker must not.
    pkce=False,
    client_auth_method="client_secret_basic",
    token_metadata=("team.id", "team.name", "enterprise.id", "is_enterprise_install",
                    "app_id", "bot_user_id", "authed_user.id"),
    account_id="team.id",  # the workspace; a reinstall into another one is refused
    token_header=Header(name="Authorization", template="Bearer {access_token}"),
    hooks=Hooks(parse_token=parse_token),
    # auth.test also answers HTTP 200 with "ok": false for a dead token.
    health_check=Request(method="POST", url="https://slack.com/api/auth.test",
                         expect_json={"ok": True}),
    actions=(
        Action(name="chat.write", description="Post messages as the app."),
        Action(name="channels.read", description="List public channels."),
        Action(name="users.read", description="Look up workspace members."),
    ),
)
