"""Salesforce: OAuth 2.0 web server flow (production and sandbox login hosts).

https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_endpoints.htm
"""

import dataclasses

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="salesforce",
    name="Salesforce",
    category="crm",
    description="Query and update records (accounts, contacts, opportunities) in a Salesforce org.",
    docs_url="https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_endpoints.htm",
    authorize_url="https://login.salesforce.com/services/oauth2/authorize",
    token_url="https://login.salesforce.com/services/oauth2/token",
    revoke_url="https://login.salesforce.com/services/oauth2/revoke",
    revoke_style="rfc7009",
    # refresh_token is what yields a refresh token; id allows the userinfo check.
    scopes=("api", "id", "refresh_token"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # instance_url is the org's API base (every call goes there); id is the identity URL.
    token_metadata=("instance_url", "id"),
    # No expires_in: the token lives as long as the org's session timeout, whose shortest
    # setting is 15 minutes; refresh that often rather than hand out a dead token.
    default_expires_in=900,
    # The login host answers userinfo for any org's token; the org host would need instance_url.
    health_check=Request(url="https://login.salesforce.com/services/oauth2/userinfo"),
    actions=(
        Action(name="records.query", description="Run SOQL queries."),
        Action(name="records.create", description="Create records."),
        Action(name="records.update", description="Update records."),
    ),
)

sandbox = dataclasses.replace(
    provider,
    slug="salesforce-sandbox",
    name="Salesforce (sandbox)",
    description="Query and update records in a Salesforce sandbox org.",
    authorize_url="https://test.salesforce.com/services/oauth2/authorize",
    token_url="https://test.salesforce.com/services/oauth2/token",
    revoke_url="https://test.salesforce.com/services/oauth2/revoke",
    health_check=Request(url="https://test.salesforce.com/services/oauth2/userinfo"),
)
