"""Google Drive: OAuth 2.0 for web server applications (Google identity platform).

https://developers.google.com/identity/protocols/oauth2/web-server
https://developers.google.com/drive/api/guides/api-specific-auth
https://developers.google.com/drive/api/reference/rest/v3/about/get
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="google-drive",
    name="Google Drive",
    category="storage",
    description="Create, read and update the Google Drive files the user shares with the agent.",
    docs_url="https://developers.google.com/drive/api/guides/api-specific-auth",
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",
    revoke_url="https://oauth2.googleapis.com/revoke",
    revoke_style="rfc7009",
    # drive.file is Google's recommended, non-sensitive scope: per-file access to files the app
    # created or the user opened with it. drive / drive.readonly are restricted (security
    # assessment) and deliberately not requested by default.
    scopes=("https://www.googleapis.com/auth/drive.file",),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # No refresh token without access_type=offline; prompt=consent re-issues one on re-install.
    authorize_params={"access_type": "offline", "prompt": "consent"},
    # about.get requires the fields parameter and accepts drive.file.
    health_check=Request(url="https://www.googleapis.com/drive/v3/about?fields=user"),
    actions=(
        Action(name="files.read", description="List and download files shared with the app."),
        Action(name="files.write", description="Upload, create and update files."),
    ),
)
