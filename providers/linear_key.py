"""Linear: personal API key, sent as ``Authorization: <key>`` with no ``Bearer`` prefix.

https://linear.app/developers/graphql
"""

from broker.spec import Action, ApiKeyProvider, Field, Header, Request

VIEWER = Request(method="POST", url="https://api.linear.app/graphql",
                 json={"query": "{ viewer { id } }"})

provider = ApiKeyProvider(
    slug="linear-key",
    name="Linear (API key)",
    category="project-management",
    description="Read, create and comment on issues in Linear with a personal API key.",
    docs_url="https://linear.app/developers/graphql",
    fields=(
        Field(name="api_key", label="Personal API key", secret=True,
              pattern=r"lin_api_[A-Za-z0-9]{32,64}",
              example="lin_api_0a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T"),
    ),
    # Unlike OAuth tokens, a personal key sent as "Bearer lin_api_..." is refused.
    apply=Header(name="Authorization", template="{api_key}"),
    verify=VIEWER,
    health_check=VIEWER,
    actions=(
        Action(name="issues.read", description="Read issues, projects and teams."),
        Action(name="issues.create", description="Create an issue."),
        Action(name="issues.update", description="Update an issue's state or assignee."),
        Action(name="comments.create", description="Comment on an issue."),
    ),
)
