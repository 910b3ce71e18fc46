"""Help Scout: OAuth 2.0 authorization code (Mailbox API 2.0).

https://developer.helpscout.com/mailbox-api/overview/authentication/
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="help-scout",
    name="Help Scout",
    category="support",
    description="Conversations, customers and mailboxes of a Help Scout account.",
    docs_url="https://developer.helpscout.com/mailbox-api/overview/authentication/",
    authorize_url="https://secure.helpscout.net/authentication/authorizeClientApplication",
    token_url="https://api.helpscout.net/v2/oauth2/token",
    # No scopes: the token acts as the authorizing user. Access tokens last 2 days.
    pkce=False,
    client_auth_method="client_secret_post",
    health_check=Request(url="https://api.helpscout.net/v2/users/me"),
    actions=(
        Action(name="conversations.read", description="Read conversations and threads."),
        Action(name="conversations.reply", description="Reply to a conversation."),
        Action(name="customers.read", description="Look up customers."),
    ),
)
