"""Zendesk: OAuth 2.0 authorization code grant, per subdomain.

https://developer.zendesk.com/api-reference/ticketing/oauth/grant_type_tokens/
"""

from broker.spec import Action, Field, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="zendesk",
    name="Zendesk",
    category="support",
    description="Read, create and update tickets in a Zendesk Support account.",
    docs_url="https://developer.zendesk.com/api-reference/ticketing/oauth/grant_type_tokens/",
    fields=(
        # One DNS label; the URLs below append .zendesk.com, so no other host is reachable.
        Field(name="subdomain", label="Zendesk subdomain",
              description="The acme in acme.zendesk.com.",
              pattern=r"[a-z0-9][a-z0-9-]{0,62}", example="acme"),
    ),
    authorize_url="https://{subdomain}.zendesk.com/oauth/authorizations/new",
    token_url="https://{subdomain}.zendesk.com/oauth/tokens",
    # OAuth clients belong to one subdomain unless Zendesk made the client global (zdg-).
    # Revocation is DELETE /api/v2/oauth/tokens/{id}.json, which no revoke_style sends.
    scopes=("tickets:read", "tickets:write", "users:read"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # Refresh tokens are mandatory since 2026-04-30 and rotate: a refresh deletes the old pair.
    health_check=Request(url="https://{subdomain}.zendesk.com/api/v2/users/me.json"),
    actions=(
        Action(name="tickets.read", description="Read tickets."),
        Action(name="tickets.create", description="Open a ticket."),
        Action(name="tickets.update", description="Comment on or update a ticket."),
        Action(name="users.read", description="Look up users."),
    ),
)
