"""Discord: OAuth 2.0 (bot install with the ``bot`` and ``guilds`` scopes).

https://discord.com/developers/docs/topics/oauth2
"""

from broker.spec import Action, OAuth2Provider, Request

# Bot permissions asked for on install: VIEW_CHANNEL (1 << 10) | SEND_MESSAGES (1 << 11).
PERMISSIONS = str((1 << 10) | (1 << 11))

provider = OAuth2Provider(
    slug="discord",
    name="Discord",
    category="communication",
    description="Add the app's bot to a Discord server and post in its channels.",
    docs_url="https://discord.com/developers/docs/topics/oauth2",
    authorize_url="https://discord.com/oauth2/authorize",
    token_url="https://discord.com/api/oauth2/token",
    revoke_url="https://discord.com/api/oauth2/token/revoke",
    revoke_style="rfc7009",
    scopes=("bot", "guilds"),
    scope_separator=" ",
    pkce=True,  # S256, listed in Discord's authorization-server metadata
    client_auth_method="client_secret_basic",
    authorize_params={"permissions": PERMISSIONS},
    # The bot scope answers with the guild the bot joined. The person installing may pick
    # another server than a requested guild_id, so the guild is read from here only.
    token_metadata=("guild.id", "guild.name"),
    # Works with any scope; reports the application, the scopes and the expiry.
    health_check=Request(url="https://discord.com/api/v10/oauth2/@me"),
    actions=(
        Action(name="messages.send", description="Post messages in the server's channels."),
        Action(name="channels.read", description="List the server's channels."),
        Action(name="guilds.read", description="List the installing user's servers."),
    ),
)
