"""HubSpot: OAuth 2.0 (date-versioned v3 endpoints).

https://developers.hubspot.com/docs/api-reference/auth-oauth-v3/guide
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from broker.spec import Action, Hooks, OAuth2Provider, Request, TokenResponse, standard_token


def parse_token(raw: Mapping[str, Any]) -> TokenResponse:
    # HubSpot lists the granted scopes as a JSON array "scopes" (with optional scopes the
    # account allowed), not an RFC 6749 "scope" string; standard_token would keep none.
    # https://developers.hubspot.com/changelog/additional-details-returned-when-generating-oauth-access-tokens
    token = standard_token(raw)
    granted = raw.get("scopes")
    if isinstance(granted, list) and all(isinstance(s, str) for s in granted):
        return dataclasses.replace(token, scopes=tuple(s for s in granted if s))
    return token


provider = OAuth2Provider(
    slug="hubspot",
    name="HubSpot",
    category="crm",
    description="Read and update contacts and read deals in a HubSpot account.",
    docs_url="https://developers.hubspot.com/docs/api-reference/auth-oauth-v3/guide",
    authorize_url="https://app.hubspot.com/oauth/authorize",
    # The v1 endpoint (/oauth/v1/token) sunsets 2027-02-16; this one takes secrets in the body.
    token_url="https://api.hubapi.com/oauth/2026-03/token",
    # No revoke_url: one refresh token can be shared by several installs of the same app in
    # the same account, so revoking it would break the others.
    scopes=("oauth", "crm.objects.contacts.read", "crm.objects.contacts.write",
            "crm.objects.deals.read"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    # hub_id (the portal id) and user_id come in the token response itself.
    token_metadata=("hub_id", "user_id"),
    account_id="hub_id",  # the portal; the user who installed may change
    hooks=Hooks(parse_token=parse_token),
    health_check=Request(url="https://api.hubapi.com/account-info/v3/details"),
    actions=(
        Action(name="contacts.read", description="Look up contacts."),
        Action(name="contacts.write", description="Create or update contacts."),
        Action(name="deals.read", description="Read deals."),
    ),
)
