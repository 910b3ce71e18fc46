"""Google Sheets: OAuth 2.0 for web server applications (Google identity platform).

https://developers.google.com/identity/protocols/oauth2/web-server
https://developers.google.com/sheets/api/scopes
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="google-sheets",
    name="Google Sheets",
    category="productivity",
    description="Read and write cell values and create spreadsheets in Google Sheets.",
    docs_url="https://developers.google.com/sheets/api/scopes",
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",
    revoke_url="https://oauth2.googleapis.com/revoke",
    revoke_style="rfc7009",
    # spreadsheets (sensitive) reaches every spreadsheet the user can open. The Sheets API has
    # no "who am I" method, so openid/email are asked for the OpenID userinfo health check.
    scopes=("openid", "email", "https://www.googleapis.com/auth/spreadsheets"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # No refresh token without access_type=offline; prompt=consent re-issues one on re-install.
    authorize_params={"access_type": "offline", "prompt": "consent"},
    health_check=Request(url="https://openidconnect.googleapis.com/v1/userinfo"),
    actions=(
        Action(name="values.read", description="Read cell values from a spreadsheet."),
        Action(name="values.write", description="Write or append cell values."),
        Action(name="spreadsheets.create", description="Create a new spreadsheet."),
    ),
)
