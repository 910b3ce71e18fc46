"""Xero: OAuth 2.0 authorization code (web app, granular scopes).

https://developer.xero.com/documentation/guides/oauth2/auth-flow
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="xero",
    name="Xero",
    category="accounting",
    description="Contacts, invoices and payments of Xero organisations.",
    docs_url="https://developer.xero.com/documentation/guides/oauth2/auth-flow",
    authorize_url="https://login.xero.com/identity/connect/authorize",
    token_url="https://identity.xero.com/connect/token",
    revoke_url="https://identity.xero.com/connect/revocation",
    revoke_style="rfc7009",
    # Apps created since 2026-03-02 only get granular scopes (accounting.transactions is
    # gone for them); offline_access is what yields a refresh token.
    scopes=("offline_access", "accounting.contacts.read", "accounting.invoices",
            "accounting.payments.read"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_basic",
    # The token is not bound to one organisation: each API call needs a xero-tenant-id
    # from GET /connections, which is also the cheap token check.
    health_check=Request(url="https://api.xero.com/connections"),
    actions=(
        Action(name="contacts.read", description="Look up contacts."),
        Action(name="invoices.read", description="Read invoices."),
        Action(name="invoices.create", description="Draft an invoice."),
        Action(name="payments.read", description="Read payments."),
    ),
)
