"""Calendly: OAuth 2.0 authorization code.

https://developer.calendly.com/create-a-developer-account
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="calendly",
    name="Calendly",
    category="calendar",
    description="Event types, scheduled events and invitees of a Calendly user.",
    docs_url="https://developer.calendly.com/create-a-developer-account",
    authorize_url="https://auth.calendly.com/oauth/authorize",
    token_url="https://auth.calendly.com/oauth/token",
    # client_id, client_secret and token in the form body.
    revoke_url="https://auth.calendly.com/oauth/revoke",
    revoke_style="rfc7009",
    pkce=False,
    client_auth_method="client_secret_post",
    # The user and organization URIs identify whose Calendly this is.
    token_metadata=("owner", "organization"),
    health_check=Request(url="https://api.calendly.com/users/me"),
    actions=(
        Action(name="event_types.read", description="List event types and booking links."),
        Action(name="events.read", description="Read scheduled events and invitees."),
        Action(name="events.cancel", description="Cancel a scheduled event."),
    ),
)
