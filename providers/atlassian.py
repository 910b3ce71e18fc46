"""Atlassian (Jira and Confluence Cloud): OAuth 2.0 (3LO) apps.

https://developer.atlassian.com/cloud/jira/platform/oauth-2-3lo-apps/
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="atlassian",
    name="Atlassian (Jira and Confluence)",
    category="project-management",
    description="Read and create Jira issues and Confluence pages on the user's Atlassian sites.",
    docs_url="https://developer.atlassian.com/cloud/jira/platform/oauth-2-3lo-apps/",
    authorize_url="https://auth.atlassian.com/authorize",
    token_url="https://auth.atlassian.com/oauth/token",
    # No revocation endpoint: the user removes the app under Connected apps.
    # offline_access is what yields a (rotating) refresh token.
    scopes=("read:jira-work", "write:jira-work", "read:jira-user",
            "read:confluence-content.all", "write:confluence-content", "offline_access"),
    scope_separator=" ",
    # PKCE is not documented for 3LO apps.
    pkce=False,
    client_auth_method="client_secret_post",
    # audience is required; prompt=consent shows the consent screen on every install.
    authorize_params={"audience": "api.atlassian.com", "prompt": "consent"},
    # The token is not tied to one site: accessible-resources lists the sites (cloudId) it
    # reaches, and API calls go to api.atlassian.com/ex/jira/{cloudId}/...
    health_check=Request(url="https://api.atlassian.com/oauth/token/accessible-resources"),
    actions=(
        Action(name="issues.read", description="Search and read Jira issues."),
        Action(name="issues.create", description="Create a Jira issue."),
        Action(name="issues.comment", description="Comment on a Jira issue."),
        Action(name="pages.read", description="Read Confluence pages."),
        Action(name="pages.create", description="Create a Confluence page."),
    ),
)
