"""Box: OAuth 2.0 authorization code (Platform App, user authentication).

https://developer.box.com/guides/authentication/oauth2/
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="box",
    name="Box",
    category="storage",
    description="Files and folders of a Box user.",
    docs_url="https://developer.box.com/guides/authentication/oauth2/",
    authorize_url="https://account.box.com/api/oauth2/authorize",
    token_url="https://api.box.com/oauth2/token",
    # Takes client_id, client_secret and token in the form body.
    revoke_url="https://api.box.com/oauth2/revoke",
    revoke_style="rfc7009",
    # No scope parameter: the app's configured scopes apply. PKCE is not documented.
    pkce=False,
    client_auth_method="client_secret_post",
    # Access tokens last 60 minutes; refresh tokens are single use (60 days).
    health_check=Request(url="https://api.box.com/2.0/users/me"),
    actions=(
        Action(name="files.read", description="Read and download files."),
        Action(name="files.upload", description="Upload files."),
        Action(name="folders.read", description="List folder contents."),
    ),
)
