"""Webhook: deliver events to any https endpoint the user pastes (a generic outgoing webhook).

https://www.rfc-editor.org/rfc/rfc9110 (plain HTTPS POST; no provider-specific auth)
"""

from broker.spec import Action, Field, WebhookProvider

provider = WebhookProvider(
    slug="webhook",
    name="Webhook",
    category="developer-tools",
    description="Post events as JSON to an https endpoint of your own.",
    docs_url="https://www.rfc-editor.org/rfc/rfc9110",
    fields=(
        # The URL often embeds a secret token (Slack, Discord, Teams webhooks), so it is
        # encrypted like a key; the broker refuses internal addresses when it is entered.
        Field(name="url", label="Webhook URL", secret=True, pattern=r"https://\S{1,2000}",
              example="https://hooks.example.com/T000/B000/XXXX"),
    ),
    actions=(Action(name="events.post", description="Post an event to the endpoint."),),
)
