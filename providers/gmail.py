"""Gmail: OAuth 2.0 for web server applications (Google identity platform).

https://developers.google.com/identity/protocols/oauth2/web-server
https://developers.google.com/gmail/api/auth/scopes
https://developers.google.com/gmail/api/reference/rest/v1/users/getProfile
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="gmail",
    name="Gmail",
    category="email",
    description="Search, read and send email from the user's Gmail mailbox.",
    docs_url="https://developers.google.com/gmail/api/auth/scopes",
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",
    revoke_url="https://oauth2.googleapis.com/revoke",
    revoke_style="rfc7009",
    # gmail.readonly is restricted and gmail.send sensitive: production use needs Google's app
    # verification (and a security assessment for restricted scopes). Users may untick scopes
    # (granular consent): the granted scope wins.
    scopes=("https://www.googleapis.com/auth/gmail.readonly",
            "https://www.googleapis.com/auth/gmail.send"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # No refresh token without access_type=offline; prompt=consent re-issues one on re-install.
    authorize_params={"access_type": "offline", "prompt": "consent"},
    # users.getProfile accepts gmail.readonly; the answer carries emailAddress.
    health_check=Request(url="https://gmail.googleapis.com/gmail/v1/users/me/profile"),
    actions=(
        Action(name="messages.read", description="Search and read Gmail messages and threads."),
        Action(name="messages.send", description="Send an email from the user's Gmail."),
    ),
)
