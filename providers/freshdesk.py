"""Freshdesk: HTTP Basic auth, the API key as username and "X" as password.

https://developers.freshdesk.com/api/#authentication
"""

from broker.spec import Action, ApiKeyProvider, Basic, Field, Request

ME = Request(url="https://{domain}/api/v2/agents/me")

provider = ApiKeyProvider(
    slug="freshdesk",
    name="Freshdesk",
    category="support",
    description="Tickets, contacts and replies of a Freshdesk helpdesk.",
    docs_url="https://developers.freshdesk.com/api/#authentication",
    fields=(
        Field(name="domain", label="Freshdesk domain",
              pattern=r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.freshdesk\.com",
              example="acme.freshdesk.com"),
        # Per agent, inheriting the agent's role (Profile settings > View API key).
        Field(name="api_key", label="API key", secret=True, pattern=r"[A-Za-z0-9]{16,64}",
              example="sFgT5kLmN8pQ2rVwXyZ1"),
    ),
    apply=Basic(username="{api_key}", password="X"),
    verify=ME,
    health_check=ME,
    actions=(
        Action(name="tickets.read", description="Read tickets and conversations."),
        Action(name="tickets.reply", description="Reply to a ticket."),
        Action(name="contacts.read", description="Look up contacts."),
    ),
)
