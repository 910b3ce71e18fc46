"""OneDrive: Microsoft identity platform (Entra ID v2.0) OAuth 2.0 for Microsoft Graph.

https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow
https://learn.microsoft.com/en-us/onedrive/developer/rest-api/api/drive_get
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="onedrive",
    name="OneDrive",
    category="storage",
    description="Browse, download and upload files in the user's OneDrive.",
    docs_url="https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow",
    # "common": OneDrive personal and OneDrive for Business alike.
    authorize_url="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
    token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",
    # No per-token revocation endpoint. offline_access yields a (rotating) refresh token.
    # Files.ReadWrite: the user's own files only (Files.*.All would reach shared ones too).
    scopes=("offline_access", "User.Read", "Files.ReadWrite"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # GET /me/drive (least privileged: Files.Read) also provisions a licensed user's drive.
    health_check=Request(url="https://graph.microsoft.com/v1.0/me/drive"),
    actions=(
        Action(name="files.read", description="List, search and download files."),
        Action(name="files.write", description="Upload, create, move and update files."),
    ),
)
