"""QuickBooks Online (Intuit): OAuth 2.0 authorization code.

https://developer.intuit.com/app/developer/qbo/docs/develop/authentication-and-authorization/oauth-2.0
"""

from broker.spec import Action, OAuth2Provider, Request

DOCS = ("https://developer.intuit.com/app/developer/qbo/docs/develop/"
        "authentication-and-authorization/oauth-2.0")

provider = OAuth2Provider(
    slug="quickbooks",
    name="QuickBooks Online",
    category="accounting",
    description="Customers, invoices and payments of a QuickBooks Online company.",
    docs_url=DOCS,
    authorize_url="https://appcenter.intuit.com/connect/oauth2",
    token_url="https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer",
    # The company id (realmId) arrives as a callback query parameter, not in the token
    # response, so token_metadata cannot keep it. Revocation takes a JSON body
    # ({"token": ...}), which no revoke_style sends.
    scopes=("com.intuit.quickbooks.accounting", "openid"),
    scope_separator=" ",
    pkce=False,
    client_auth_method="client_secret_basic",
    # Access tokens last 1 h; refresh tokens ~100 days and may rotate on use.
    # openid makes the (company-independent) userinfo endpoint usable as a token check.
    health_check=Request(url="https://accounts.platform.intuit.com/v1/openid_connect/userinfo"),
    actions=(
        Action(name="customers.read", description="Look up customers."),
        Action(name="invoices.read", description="Read invoices."),
        Action(name="invoices.create", description="Create an invoice."),
        Action(name="payments.read", description="Read payments."),
    ),
)
