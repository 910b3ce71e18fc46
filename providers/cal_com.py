"""Cal.com: OAuth 2.0 (API v2 OAuth clients, scoped).

https://cal.com/docs/api-reference/v2/oauth
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="cal-com",
    name="Cal.com",
    category="calendar",
    description="Read event types, schedules and bookings, and manage bookings.",
    docs_url="https://cal.com/docs/api-reference/v2/oauth",
    authorize_url="https://app.cal.com/auth/oauth2/authorize",
    token_url="https://api.cal.com/v2/auth/oauth2/token",
    # Cal.com documents no revocation endpoint. Scopes are space- or comma-separated and
    # must be a subset of those enabled on the (admin-approved) OAuth client.
    scopes=("PROFILE_READ", "EVENT_TYPE_READ", "SCHEDULE_READ", "BOOKING_READ",
            "BOOKING_WRITE"),
    scope_separator=" ",
    # PKCE is documented for public clients only; the confidential flow sends the secret.
    pkce=False,
    client_auth_method="client_secret_post",
    # Access tokens last 30 min (expires_in 1800); each refresh returns a new refresh token.
    health_check=Request(url="https://api.cal.com/v2/me"),
    actions=(
        Action(name="event_types.read", description="List and read event types."),
        Action(name="schedules.read", description="Read availability schedules."),
        Action(name="bookings.read", description="List and read bookings."),
        Action(name="bookings.update", description="Confirm, decline or reassign a booking."),
    ),
)
