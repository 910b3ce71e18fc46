"""Typeform: OAuth 2.0 authorization code; ``offline`` scope for a refresh token.

https://www.typeform.com/developers/get-started/applications/
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="typeform",
    name="Typeform",
    category="productivity",
    description="Forms and responses of a Typeform account.",
    docs_url="https://www.typeform.com/developers/get-started/applications/",
    authorize_url="https://api.typeform.com/oauth/authorize",
    token_url="https://api.typeform.com/oauth/token",
    # Accounts in the EU data center use api.eu.typeform.com instead (not covered here).
    scopes=("offline", "accounts:read", "forms:read", "responses:read"),
    scope_separator=" ",
    pkce=False,
    client_auth_method="client_secret_post",
    health_check=Request(url="https://api.typeform.com/me"),
    actions=(
        Action(name="forms.read", description="List forms and their questions."),
        Action(name="responses.read", description="Read form responses."),
    ),
)
