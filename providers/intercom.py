"""Intercom: OAuth 2.0 (public apps, US workspaces).

https://developers.intercom.com/docs/build-an-integration/learn-more/authentication/setting-up-oauth
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="intercom",
    name="Intercom",
    category="support",
    description="Read and reply to conversations and look up contacts in an Intercom workspace.",
    docs_url="https://developers.intercom.com/docs/build-an-integration/learn-more/authentication/setting-up-oauth",
    # US-hosted workspaces; EU/AU workspaces use app.eu/app.au and api.eu/api.au hosts.
    authorize_url="https://app.intercom.com/oauth",
    token_url="https://api.intercom.io/auth/eagle/token",
    # Permissions are set on the app in the Developer Hub, not requested. Tokens never
    # expire and there is no refresh; "revoking" means uninstalling the app.
    scopes=(),
    pkce=False,
    client_auth_method="client_secret_post",
    health_check=Request(url="https://api.intercom.io/me",
                         headers={"Intercom-Version": "2.11"}),
    actions=(
        Action(name="conversations.read", description="Read conversations."),
        Action(name="conversations.reply", description="Reply to a conversation."),
        Action(name="contacts.read", description="Look up contacts."),
    ),
)
