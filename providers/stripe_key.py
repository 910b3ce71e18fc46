"""Stripe: secret API key, sent as ``Authorization: Bearer sk_...``.

https://docs.stripe.com/api/authentication
"""

from broker.spec import Action, ApiKeyProvider, Field, Header, Request

provider = ApiKeyProvider(
    slug="stripe-key",
    name="Stripe (API key)",
    category="payments",
    description="Payments, customers and refunds of a Stripe account, with a secret key.",
    docs_url="https://docs.stripe.com/api/authentication",
    fields=(
        # Secret (sk_) or restricted (rk_) keys; publishable pk_ keys cannot call the API.
        # The prefix tells test mode from live mode.
        Field(name="secret_key", label="Secret or restricted key", secret=True,
              pattern=r"(?:sk|rk)_(?:test|live)_[A-Za-z0-9]{16,247}",
              example="sk_test_4eC39HqLyjWDarjtT1zdp7dc",
              description="A restricted key needs read access to the account."),
    ),
    # Stripe documents Basic (key as username) and Bearer; Bearer keeps the key in one header.
    apply=Header(name="Authorization", template="Bearer {secret_key}"),
    verify=Request(url="https://api.stripe.com/v1/account"),
    health_check=Request(url="https://api.stripe.com/v1/account"),
    actions=(
        Action(name="charges.read", description="Read charges and payments."),
        Action(name="customers.read", description="Look up customers."),
        Action(name="refunds.create", description="Refund a charge."),
    ),
)
