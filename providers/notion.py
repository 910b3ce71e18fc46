"""Notion: OAuth 2.0 (public connection), Basic client auth and a JSON token request.

https://developers.notion.com/docs/authorization
"""

from broker.spec import Action, OAuth2Provider, Request

# Notion requires a dated API version header on every API request.
NOTION_VERSION = "2025-09-03"

provider = OAuth2Provider(
    slug="notion",
    name="Notion",
    category="productivity",
    description="Search, read and update the pages and databases shared with the app.",
    docs_url="https://developers.notion.com/docs/authorization",
    authorize_url="https://api.notion.com/v1/oauth/authorize",
    # Token and refresh requests are JSON with Basic client credentials; current tokens
    # come with a rotating refresh token (https://developers.notion.com/reference/create-a-token).
    token_url="https://api.notion.com/v1/oauth/token",
    # Revocation (POST /v1/oauth/revoke) needs a Notion-Version header and a JSON body of
    # only {"token"}; the rfc7009 style sends neither, so it is left out.
    scopes=(),  # no OAuth scopes: capabilities are set on the connection, pages picked by user
    pkce=False,  # not documented
    client_auth_method="client_secret_basic",
    token_request_format="json",
    authorize_params={"owner": "user"},
    token_metadata=("workspace_id", "workspace_name", "bot_id"),
    account_id="workspace_id",
    health_check=Request(url="https://api.notion.com/v1/users/me",
                         headers={"Notion-Version": NOTION_VERSION}),
    actions=(
        Action(name="search.read", description="Search shared pages and databases."),
        Action(name="pages.read", description="Read pages and their blocks."),
        Action(name="pages.create", description="Create a page."),
        Action(name="pages.update", description="Update a page's properties or content."),
    ),
)
