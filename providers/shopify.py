"""Shopify: OAuth 2.0 authorization-code grant, per shop.

https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens/authorization-code-grant
"""

from broker.spec import Action, Field, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="shopify",
    name="Shopify",
    category="commerce",
    description="Orders, customers and refunds of a Shopify store.",
    docs_url="https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens/authorization-code-grant",
    fields=(
        # Shopify's own shop validator; never a free host, so the URLs below stay on Shopify.
        Field(name="shop", label="Shop domain", pattern=r"[a-zA-Z0-9][a-zA-Z0-9-]*\.myshopify\.com",
              example="acme.myshopify.com"),
    ),
    authorize_url="https://{shop}/admin/oauth/authorize",
    token_url="https://{shop}/admin/oauth/access_token",
    scopes=("read_orders", "write_orders", "read_customers"),
    scope_separator=",",
    pkce=False,
    client_auth_method="client_secret_post",
    # Expiring offline tokens (60 min + refresh token); required for new public apps.
    token_params={"expiring": "1"},
    health_check=Request(method="POST", url="https://{shop}/admin/api/2025-10/graphql.json"),
    actions=(
        Action(name="orders.read", description="Read orders."),
        Action(name="orders.cancel", description="Cancel an order."),
        Action(name="refunds.create", description="Refund an order."),
    ),
)
