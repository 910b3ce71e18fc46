"""Mailgun: HTTP Basic auth, user ``api`` and the API key as password, per region.

https://documentation.mailgun.com/docs/mailgun/api-reference/authentication
"""

from broker.spec import Action, ApiKeyProvider, Basic, Field, Request

provider = ApiKeyProvider(
    slug="mailgun",
    name="Mailgun",
    category="email",
    description="Send email and read delivery events through Mailgun.",
    docs_url="https://documentation.mailgun.com/docs/mailgun/api-reference/authentication",
    fields=(
        # Data never crosses regions: the key only works on the host of its region.
        Field(name="region", label="Region", choices=("api", "api.eu")),
        Field(name="api_key", label="API key", secret=True, pattern=r"[A-Za-z0-9-]{20,100}",
              example="3f1c9a0e7b2d4c5e8f6a1b0c9d8e7f6a-4b3c2d1e-9f8e7d6c"),
    ),
    apply=Basic(username="api", password="{api_key}"),
    verify=Request(url="https://{region}.mailgun.net/v4/domains"),
    health_check=Request(url="https://{region}.mailgun.net/v4/domains"),
    actions=(
        Action(name="email.send", description="Send an email."),
        Action(name="events.read", description="Read delivery events."),
    ),
)
