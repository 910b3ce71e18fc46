"""Webflow: OAuth 2.0 authorization code (Data API v2); tokens do not expire.

https://developers.webflow.com/data/reference/oauth-app
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="webflow",
    name="Webflow",
    category="marketing",
    description="Sites and CMS collections of a Webflow workspace.",
    docs_url="https://developers.webflow.com/data/reference/oauth-app",
    authorize_url="https://webflow.com/oauth/authorize",
    token_url="https://api.webflow.com/oauth/access_token",
    scopes=("authorized_user:read", "sites:read", "cms:read", "cms:write"),
    scope_separator=" ",
    pkce=False,
    client_auth_method="client_secret_post",
    health_check=Request(url="https://api.webflow.com/v2/token/authorized_by"),
    actions=(
        Action(name="sites.read", description="List sites."),
        Action(name="cms_items.read", description="Read CMS collection items."),
        Action(name="cms_items.write", description="Create or update CMS collection items."),
    ),
)
