"""monday.com: OAuth 2.0 authorization code; tokens do not expire.

https://developer.monday.com/apps/docs/oauth
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="monday",
    name="monday.com",
    category="project-management",
    description="Boards, items and updates of a monday.com account.",
    docs_url="https://developer.monday.com/apps/docs/oauth",
    authorize_url="https://auth.monday.com/oauth2/authorize",
    token_url="https://auth.monday.com/oauth2/token",
    scopes=("me:read", "boards:read", "boards:write", "updates:write"),
    scope_separator=" ",
    pkce=False,
    client_auth_method="client_secret_post",
    health_check=Request(method="POST", url="https://api.monday.com/v2",
                         json={"query": "{ me { id } }"},
                         headers={"API-Version": "2025-10"}),
    actions=(
        Action(name="boards.read", description="Read boards and items."),
        Action(name="items.create", description="Create an item on a board."),
        Action(name="updates.create", description="Post an update on an item."),
    ),
)
