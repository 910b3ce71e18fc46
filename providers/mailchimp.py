"""Mailchimp: OAuth 2.0 (Marketing API); tokens never expire and carry no scopes.

https://mailchimp.com/developer/marketing/guides/access-user-data-oauth-2/
"""

from broker.spec import Action, Header, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="mailchimp",
    name="Mailchimp",
    category="marketing",
    description="Audiences, members and campaigns of a Mailchimp account.",
    docs_url="https://mailchimp.com/developer/marketing/guides/access-user-data-oauth-2/",
    authorize_url="https://login.mailchimp.com/oauth2/authorize",
    token_url="https://login.mailchimp.com/oauth2/token",
    # No scopes exist; "expires_in": 0 means never expires (standard_token reads 0 as None).
    # PKCE is not documented; no revocation endpoint (the user removes the app).
    pkce=False,
    client_auth_method="client_secret_post",
    token_header=Header(name="Authorization", template="OAuth {access_token}"),
    # The API host ({dc}.api.mailchimp.com) is only known from this call, so it is also the
    # cheap token check.
    health_check=Request(url="https://login.mailchimp.com/oauth2/metadata"),
    actions=(
        Action(name="audiences.read", description="List audiences."),
        Action(name="members.write", description="Add or update audience members."),
        Action(name="campaigns.read", description="Read campaigns and their reports."),
    ),
)
