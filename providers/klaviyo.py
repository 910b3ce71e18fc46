"""Klaviyo: OAuth 2.0 authorization code with PKCE (required).

https://developers.klaviyo.com/en/docs/set_up_oauth
"""

from broker.spec import Action, OAuth2Provider, Request

# Klaviyo pins behaviour per dated revision; every /api call must send one.
REVISION = "2026-10-15"

provider = OAuth2Provider(
    slug="klaviyo",
    name="Klaviyo",
    category="marketing",
    description="Profiles, lists, events and campaigns of a Klaviyo account.",
    docs_url="https://developers.klaviyo.com/en/docs/set_up_oauth",
    authorize_url="https://www.klaviyo.com/oauth/authorize",
    # Token and revoke traffic through www.klaviyo.com is blocked since 2025-03-31.
    token_url="https://a.klaviyo.com/oauth/token",
    revoke_url="https://a.klaviyo.com/oauth/revoke",
    revoke_style="rfc7009",
    scopes=("accounts:read", "profiles:read", "profiles:write", "lists:read", "events:write"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_basic",
    health_check=Request(url="https://a.klaviyo.com/api/accounts",
                         headers={"revision": REVISION,
                                  "Accept": "application/vnd.api+json"}),
    actions=(
        Action(name="profiles.read", description="Look up customer profiles."),
        Action(name="profiles.write", description="Create or update customer profiles."),
        Action(name="lists.read", description="Read lists and segments."),
        Action(name="events.create", description="Track an event for a profile."),
    ),
)
