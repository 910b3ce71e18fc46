"""SendGrid: API key as a Bearer token, global or EU host.

https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/authentication
"""

from broker.spec import Action, ApiKeyProvider, Field, Header, Request

# Lists the key's own scopes: works for restricted keys too and shows whether mail.send is on.
DOCS = ("https://www.twilio.com/docs/sendgrid/api-reference/"
        "how-to-use-the-sendgrid-v3-api/authentication")
SCOPES = Request(url="https://{region}.sendgrid.com/v3/scopes")

provider = ApiKeyProvider(
    slug="sendgrid",
    name="SendGrid",
    category="email",
    description="Send email through Twilio SendGrid.",
    docs_url=DOCS,
    fields=(
        # EU regional subusers are only served by api.eu.sendgrid.com.
        Field(name="region", label="Region", choices=("api", "api.eu")),
        Field(name="api_key", label="API key", secret=True,
              pattern=r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
              example="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"),
    ),
    apply=Header(name="Authorization", template="Bearer {api_key}"),
    verify=SCOPES,
    health_check=SCOPES,
    actions=(Action(name="email.send", description="Send an email."),),
)
