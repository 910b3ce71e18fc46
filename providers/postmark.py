"""Postmark: server API token in the ``X-Postmark-Server-Token`` header.

https://postmarkapp.com/developer/api/overview
"""

from broker.spec import Action, ApiKeyProvider, Field, Header, Request

provider = ApiKeyProvider(
    slug="postmark",
    name="Postmark",
    category="email",
    description="Send transactional email through a Postmark server.",
    docs_url="https://postmarkapp.com/developer/api/overview",
    fields=(
        Field(name="server_token", label="Server API token", secret=True,
              pattern=r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
              example="3c9a0e7b-2d4c-4e8f-a1b0-c9d8e7f6a5b4"),
    ),
    # Postmark ignores Authorization: Bearer and answers 401.
    apply=Header(name="X-Postmark-Server-Token", template="{server_token}"),
    verify=Request(url="https://api.postmarkapp.com/server"),
    health_check=Request(url="https://api.postmarkapp.com/server"),
    actions=(Action(name="email.send", description="Send an email."),),
)
