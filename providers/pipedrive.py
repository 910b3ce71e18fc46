"""Pipedrive: OAuth 2.0 (Marketplace apps).

https://pipedrive.readme.io/docs/marketplace-oauth-authorization
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="pipedrive",
    name="Pipedrive",
    category="crm",
    description="Read and update deals, persons and activities in a Pipedrive company.",
    docs_url="https://pipedrive.readme.io/docs/marketplace-oauth-authorization",
    authorize_url="https://oauth.pipedrive.com/oauth/authorize",
    token_url="https://oauth.pipedrive.com/oauth/token",
    # Scopes are set on the app in the Marketplace Manager, not requested.
    scopes=(),
    pkce=False,
    # Pipedrive requires the client credentials as HTTP Basic on the token endpoint.
    client_auth_method="client_secret_basic",
    # api_domain (https://<company>.pipedrive.com) is the company's API base; it comes back
    # on every exchange and refresh and can change.
    token_metadata=("api_domain",),
    # The company host is only known from the token response, so the check uses the global
    # API host, which serves OAuth tokens too.
    health_check=Request(url="https://api.pipedrive.com/v1/users/me"),
    actions=(
        Action(name="deals.read", description="Read deals."),
        Action(name="deals.write", description="Create or update deals."),
        Action(name="persons.read", description="Look up persons."),
        Action(name="activities.write", description="Schedule activities."),
    ),
)
