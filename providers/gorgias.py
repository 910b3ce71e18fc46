"""Gorgias: HTTP Basic auth, the user's email and a REST API key (private apps).

https://developers.gorgias.com/docs/access-tokens-api-keys
"""

from broker.spec import Action, Basic, BasicAuthProvider, Field, Request

ACCOUNT = Request(url="https://{domain}/api/account")

provider = BasicAuthProvider(
    slug="gorgias",
    name="Gorgias",
    category="support",
    description="Tickets, messages and customers of a Gorgias helpdesk.",
    docs_url="https://developers.gorgias.com/docs/access-tokens-api-keys",
    fields=(
        Field(name="domain", label="Gorgias domain",
              pattern=r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.gorgias\.com",
              example="acme-store.gorgias.com"),
        Field(name="email", label="Email", description="The user the API key belongs to.",
              pattern=r"[^@\s:]+@[^@\s:]+\.[^@\s:]+", example="support@acme-store.com"),
        Field(name="api_key", label="REST API key", secret=True, pattern=r"[A-Za-z0-9]{20,128}",
              example="b6d2c0f84e1a4f3c9a7e5d1b2c3f4a5e6d7c8b9a0f1e2d3c4b5a6978"),
    ),
    apply=Basic(username="{email}", password="{api_key}"),
    verify=ACCOUNT,
    health_check=ACCOUNT,
    actions=(
        Action(name="tickets.read", description="Read tickets and their messages."),
        Action(name="tickets.reply", description="Reply to a ticket."),
        Action(name="customers.read", description="Look up customers."),
    ),
)
