"""Airtable: OAuth 2.0 with mandatory PKCE.

https://airtable.com/developers/web/api/oauth-reference
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="airtable",
    name="Airtable",
    category="productivity",
    description="Read base schemas and read, create and update records in Airtable bases.",
    docs_url="https://airtable.com/developers/web/api/oauth-reference",
    authorize_url="https://airtable.com/oauth2/v1/authorize",
    token_url="https://airtable.com/oauth2/v1/token",
    # No revocation endpoint is documented.
    scopes=("data.records:read", "data.records:write", "schema.bases:read"),
    scope_separator=" ",
    # Airtable requires S256 PKCE on every authorization, confidential clients included.
    pkce=True,
    # Integrations with a client secret authenticate with HTTP Basic.
    client_auth_method="client_secret_basic",
    # Access tokens last 60 min; refresh tokens are single use (a new one each refresh).
    health_check=Request(url="https://api.airtable.com/v0/meta/whoami"),
    actions=(
        Action(name="bases.read", description="Read base and table schemas."),
        Action(name="records.read", description="List and read records."),
        Action(name="records.create", description="Create records."),
        Action(name="records.update", description="Update records."),
    ),
)
