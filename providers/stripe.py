"""Stripe: OAuth 2.0 (Stripe Connect, Standard accounts).

https://docs.stripe.com/connect/oauth-reference
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="stripe",
    name="Stripe",
    category="payments",
    description="Payments, customers and refunds of a connected Stripe account.",
    docs_url="https://docs.stripe.com/connect/oauth-reference",
    authorize_url="https://connect.stripe.com/oauth/authorize",
    token_url="https://connect.stripe.com/oauth/token",
    # Revocation is POST /oauth/deauthorize with client_id + stripe_user_id under the
    # platform's secret key: neither revoke_style, so it is left out.
    scopes=("read_write",),  # Stripe takes a single scope value: read_write or read_only
    scope_separator=" ",
    pkce=False,  # not part of Connect OAuth
    # The "client secret" is the platform's own secret key (sk_live_/sk_test_), in the body.
    client_auth_method="client_secret_post",
    # stripe_user_id (acct_...) is the connected account, usable with Stripe-Account.
    token_metadata=("stripe_user_id", "livemode"),
    # The access token is a secret key for the connected account, sent as a bearer.
    health_check=Request(url="https://api.stripe.com/v1/account"),
    actions=(
        Action(name="charges.read", description="Read charges and payments."),
        Action(name="customers.read", description="Look up customers."),
        Action(name="refunds.create", description="Refund a charge."),
    ),
)
