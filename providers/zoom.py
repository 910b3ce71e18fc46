"""Zoom: OAuth 2.0 authorization code grant (user-managed apps).

https://developers.zoom.us/docs/integrations/oauth/
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="zoom",
    name="Zoom",
    category="communication",
    description="Read the user's profile and list, create and update Zoom meetings.",
    docs_url="https://developers.zoom.us/docs/integrations/oauth/",
    authorize_url="https://zoom.us/oauth/authorize",
    token_url="https://zoom.us/oauth/token",
    # POST token=<access token> with the client's Basic credentials.
    revoke_url="https://zoom.us/oauth/revoke",
    revoke_style="rfc7009",
    # Scopes are configured on the app in the Zoom Marketplace, not requested.
    scopes=(),
    pkce=True,
    # Zoom requires the client credentials as HTTP Basic.
    client_auth_method="client_secret_basic",
    # Refresh tokens rotate: each refresh returns a new one and the old one stops working.
    token_metadata=("api_url",),
    health_check=Request(url="https://api.zoom.us/v2/users/me"),
    actions=(
        Action(name="meetings.read", description="List and read meetings."),
        Action(name="meetings.create", description="Schedule a meeting."),
        Action(name="meetings.update", description="Update a meeting."),
    ),
)
