"""Calendly: OAuth 2.0 authorization code with PKCE.

https://developer.calendly.com/api-docs/calendly-o-auth/o-auth/post-oauth-refresh-token
https://developer.calendly.com/api-docs/calendly-o-auth/o-auth/get-oauth-authorize
https://developer.calendly.com/creating-an-oauth-app
https://developer.calendly.com/how-to-access-calendly-data-on-behalf-of-authenticated-users
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="calendly",
    name="Calendly",
    category="calendar",
    description="Event types, scheduled events and invitees of a Calendly user.",
    docs_url="https://developer.calendly.com/how-to-access-calendly-data-on-behalf-of-authenticated-users",
    authorize_url="https://auth.calendly.com/oauth/authorize",
    # Web clients authenticate with HTTP Basic (client_id:client_secret). Access tokens last
    # 2 hours; refresh tokens are single-use and rotate on every refresh.
    token_url="https://auth.calendly.com/oauth/token",
    # Scopes are chosen on the app's registration, not requested on the authorize URL.
    # Calendly recommends PKCE (S256) for all OAuth apps, web or native.
    pkce=True,
    client_auth_method="client_secret_basic",
    # No revoke_url: POST https://auth.calendly.com/oauth/revoke documents client_id and
    # client_secret in the form body, while the token endpoint documents HTTP Basic; the
    # spec has one client_auth_method for both.
    # The token response names the user and organization URIs.
    token_metadata=("owner", "organization"),
    health_check=Request(url="https://api.calendly.com/users/me"),
    actions=(
        Action(name="event_types.read", description="List event types and booking links."),
        Action(name="events.read", description="Read scheduled events and invitees."),
        Action(name="events.cancel", description="Cancel a scheduled event."),
    ),
)
