"""Sentry (sentry.io): user auth token as a Bearer token.

https://docs.sentry.io/api/auth/
"""

from broker.spec import Action, ApiKeyProvider, Field, Header, Request

ORGANIZATIONS = Request(url="https://sentry.io/api/0/organizations/")

provider = ApiKeyProvider(
    slug="sentry",
    name="Sentry",
    category="developer-tools",
    description="Issues and events of Sentry organizations on sentry.io.",
    docs_url="https://docs.sentry.io/api/auth/",
    fields=(
        # A user auth token (User settings > User Auth Tokens): List Your Organizations
        # requires one. The docs give no token format, so the pattern only bounds it.
        Field(name="auth_token", label="User auth token", secret=True,
              pattern=r"[A-Za-z0-9_]{20,200}",
              example="sntryu_" + "0123456789abcdef" * 4),
    ),
    apply=Header(name="Authorization", template="Bearer {auth_token}"),
    verify=ORGANIZATIONS,
    health_check=ORGANIZATIONS,
    actions=(
        Action(name="issues.read", description="Read issues and their events."),
        Action(name="issues.update", description="Resolve, assign or ignore an issue."),
    ),
)
