"""Shopify: OAuth 2.0 authorization-code grant, per shop.

https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens/authorization-code-grant
https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens/offline-access-tokens
"""

import hashlib
import hmac
import re
import time

from broker.spec import (
    Action,
    Callback,
    CallbackError,
    Field,
    Header,
    Hooks,
    OAuth2Provider,
    Request,
)

SHOP = r"[a-zA-Z0-9][a-zA-Z0-9-]*\.myshopify\.com"
# Shopify's own libraries accept a callback timestamp this far from the local clock.
CLOCK_TOLERANCE = 90


def validate_callback(callback: Callback) -> None:
    # The callback is signed: hex HMAC-SHA256 with the app secret over every other query
    # parameter, sorted, as k=v joined by & (docs: "Verify a request"; shopify-app-js
    # hmac-validator). Checked before the code is sent anywhere.
    params = dict(callback.query)
    if len(params) != len(callback.query):
        raise CallbackError("a parameter is repeated")
    given = params.pop("hmac", "")
    params.pop("signature", None)
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    # Any accepted secret (the current one, or one still valid while the app's secret
    # rotates); every candidate is compared, in constant time.
    matches = [hmac.compare_digest(hmac.new(secret.encode(), message.encode(),
                                            hashlib.sha256).hexdigest(), given)
               for secret in callback.secrets]
    if not any(matches):
        raise CallbackError("the callback signature does not match")
    timestamp = params.get("timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > CLOCK_TOLERANCE:
        raise CallbackError("the callback is too old")
    shop = params.get("shop", "")
    if not re.fullmatch(SHOP, shop) or shop.lower() != callback.inputs.get("shop", "").lower():
        raise CallbackError("the callback names another shop")


provider = OAuth2Provider(
    slug="shopify",
    name="Shopify",
    category="commerce",
    description="Orders, customers and refunds of a Shopify store.",
    docs_url="https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens/authorization-code-grant",
    fields=(
        # Shopify's own shop validator; never a free host, so the URLs below stay on Shopify.
        Field(name="shop", label="Shop domain", pattern=SHOP, example="acme.myshopify.com"),
    ),
    authorize_url="https://{shop}/admin/oauth/authorize",
    token_url="https://{shop}/admin/oauth/access_token",
    scopes=("read_orders", "write_orders", "read_customers"),
    scope_separator=",",
    pkce=False,
    client_auth_method="client_secret_post",
    # Expiring offline tokens (60 min + refresh token); required for new public apps.
    token_params={"expiring": "1"},
    # The Admin API takes the token in its own header, not Authorization: Bearer.
    token_header=Header(name="X-Shopify-Access-Token", template="{access_token}"),
    hooks=Hooks(validate_callback=validate_callback),
    # The shop is the account: a reinstall for another shop must not replace this one's token.
    account_id="shop",
    health_check=Request(method="POST", url="https://{shop}/admin/api/2025-10/graphql.json",
                         json={"query": "{ shop { name myshopifyDomain } }"}),
    actions=(
        Action(name="orders.read", description="Read orders."),
        Action(name="orders.cancel", description="Cancel an order."),
        Action(name="refunds.create", description="Refund an order."),
    ),
)
