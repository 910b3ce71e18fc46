"""Google Calendar: OAuth 2.0 for web server applications (Google identity platform).

https://developers.google.com/identity/protocols/oauth2/web-server
https://developers.google.com/calendar/api/auth
https://developers.google.com/calendar/api/v3/reference/calendarList/list
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="google-calendar",
    name="Google Calendar",
    category="calendar",
    description="Read the user's calendars and create or update Google Calendar events.",
    docs_url="https://developers.google.com/calendar/api/auth",
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",
    revoke_url="https://oauth2.googleapis.com/revoke",
    revoke_style="rfc7009",
    # calendar.events covers events on every calendar; calendarList.list does not accept it,
    # so calendar.calendarlist.readonly is asked for too (calendars.read and the health check).
    scopes=("https://www.googleapis.com/auth/calendar.events",
            "https://www.googleapis.com/auth/calendar.calendarlist.readonly"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # No refresh token without access_type=offline; prompt=consent re-issues one on re-install.
    authorize_params={"access_type": "offline", "prompt": "consent"},
    health_check=Request(
        url="https://www.googleapis.com/calendar/v3/users/me/calendarList?maxResults=1"),
    actions=(
        Action(name="calendars.read", description="List the calendars the user subscribes to."),
        Action(name="events.read", description="Read calendar events."),
        Action(name="events.write", description="Create, update or delete calendar events."),
    ),
)
