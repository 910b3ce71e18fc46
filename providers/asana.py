"""Asana: OAuth 2.0 authorization code grant.

https://developers.asana.com/docs/oauth
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="asana",
    name="Asana",
    category="project-management",
    description="Read projects and read, create and update tasks in Asana workspaces.",
    docs_url="https://developers.asana.com/docs/oauth",
    authorize_url="https://app.asana.com/-/oauth_authorize",
    token_url="https://app.asana.com/-/oauth_token",
    # POST client_id, client_secret and token.
    revoke_url="https://app.asana.com/-/oauth_revoke",
    revoke_style="rfc7009",
    scopes=("projects:read", "tasks:read", "tasks:write", "users:read"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # The token response carries the authorizing user as data {gid, name, email}.
    token_metadata=("data.gid", "data.name"),
    health_check=Request(url="https://app.asana.com/api/1.0/users/me"),
    actions=(
        Action(name="projects.read", description="List and read projects."),
        Action(name="tasks.read", description="Read tasks."),
        Action(name="tasks.create", description="Create a task."),
        Action(name="tasks.update", description="Update or complete a task."),
    ),
)
