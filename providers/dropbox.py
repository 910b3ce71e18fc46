"""Dropbox: OAuth 2.0 with short-lived access tokens and offline refresh tokens.

https://developers.dropbox.com/oauth-guide
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="dropbox",
    name="Dropbox",
    category="storage",
    description="List, read and upload files in the user's Dropbox.",
    docs_url="https://developers.dropbox.com/oauth-guide",
    authorize_url="https://www.dropbox.com/oauth2/authorize",
    token_url="https://api.dropboxapi.com/oauth2/token",
    # POST with the token to revoke as the bearer credential, no body.
    revoke_url="https://api.dropboxapi.com/2/auth/token/revoke",
    revoke_style="bearer",
    scopes=("account_info.read", "files.metadata.read", "files.content.read",
            "files.content.write"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_basic",
    # Without token_access_type=offline Dropbox issues only a ~4 h access token, no refresh.
    authorize_params={"token_access_type": "offline"},
    # account_id identifies the user; team_id is present for team-linked apps.
    token_metadata=("account_id", "team_id"),
    # An RPC endpoint: POST with no body.
    health_check=Request(method="POST",
                         url="https://api.dropboxapi.com/2/users/get_current_account"),
    actions=(
        Action(name="files.list", description="List folders and file metadata."),
        Action(name="files.read", description="Download a file."),
        Action(name="files.upload", description="Upload a file."),
    ),
)
