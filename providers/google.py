"""Google: OAuth 2.0 for web server applications (Gmail and Calendar).

https://developers.google.com/identity/protocols/oauth2/web-server
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="google",
    name="Google",
    category="productivity",
    description="Read and send Gmail messages and manage Google Calendar events.",
    docs_url="https://developers.google.com/identity/protocols/oauth2/web-server",
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",
    revoke_url="https://oauth2.googleapis.com/revoke",
    revoke_style="rfc7009",
    # Gmail and Calendar scopes are sensitive/restricted: production use needs Google's
    # app verification. Users may untick scopes (granular consent): the granted scope wins.
    scopes=("openid", "email", "https://www.googleapis.com/auth/gmail.readonly",
            "https://www.googleapis.com/auth/gmail.send",
            "https://www.googleapis.com/auth/calendar.events"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # No refresh token without access_type=offline; prompt=consent makes Google issue one
    # again on a re-install (otherwise only the first consent gets one).
    authorize_params={"access_type": "offline", "prompt": "consent"},
    health_check=Request(url="https://openidconnect.googleapis.com/v1/userinfo"),
    actions=(
        Action(name="email.read", description="Search and read Gmail messages."),
        Action(name="email.send", description="Send an email from the user's Gmail."),
        Action(name="events.read", description="Read calendar events."),
        Action(name="events.write", description="Create or update calendar events."),
    ),
)
