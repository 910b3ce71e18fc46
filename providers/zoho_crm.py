"""Zoho CRM: OAuth 2.0 authorization code (US data center, accounts.zoho.com).

https://zoho.com/accounts/protocol/oauth/web-apps/authorization.html
https://zoho.com/accounts/protocol/oauth/web-apps/access-token.html
"""

from broker.spec import Action, Header, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="zoho-crm",
    name="Zoho CRM",
    category="crm",
    description="Leads, contacts and deals of a Zoho CRM organization (US data center).",
    docs_url="https://zoho.com/accounts/protocol/oauth/web-apps/authorization.html",
    authorize_url="https://accounts.zoho.com/oauth/v2/auth",
    # client_id and client_secret are sent as parameters of the token request.
    token_url="https://accounts.zoho.com/oauth/v2/token",
    scopes=("ZohoCRM.modules.ALL", "ZohoCRM.users.READ"),
    scope_separator=",",
    pkce=False,
    client_auth_method="client_secret_post",
    # A refresh token only comes with access_type=offline; prompt=consent re-issues one.
    authorize_params={"access_type": "offline", "prompt": "consent"},
    # The API base for this organization's data center.
    token_metadata=("api_domain",),
    token_header=Header(name="Authorization", template="Zoho-oauthtoken {access_token}"),
    health_check=Request(url="https://www.zohoapis.com/crm/v8/users?type=CurrentUser"),
    actions=(
        Action(name="leads.read", description="Read leads."),
        Action(name="leads.create", description="Create a lead."),
        Action(name="contacts.read", description="Read contacts."),
        Action(name="deals.read", description="Read deals."),
    ),
)
