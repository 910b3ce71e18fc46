"""Aircall: OAuth 2.0 authorization code (technology partners); tokens do not expire.

https://developer.aircall.io/tutorials/how-aircall-oauth-flow-works/
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="aircall",
    name="Aircall",
    category="communication",
    description="Calls, contacts and users of an Aircall account.",
    docs_url="https://developer.aircall.io/tutorials/how-aircall-oauth-flow-works/",
    authorize_url="https://dashboard.aircall.io/oauth/authorize",
    token_url="https://api.aircall.io/v1/oauth/token",
    scopes=("public_api",),
    scope_separator=" ",
    pkce=False,
    client_auth_method="client_secret_post",
    health_check=Request(url="https://api.aircall.io/v1/integrations/me"),
    actions=(
        Action(name="calls.read", description="Read calls and recordings."),
        Action(name="contacts.read", description="Look up contacts."),
        Action(name="contacts.write", description="Create or update contacts."),
    ),
)
