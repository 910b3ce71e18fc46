"""HubSpot's parse_token hook: granted scopes come as a JSON array ``scopes``."""

from __future__ import annotations

import pytest

from broker.spec import TokenError
from providers.hubspot import parse_token

DOCUMENTED = {  # the changelog example (additional details returned with the token)
    "token_type": "bearer", "refresh_token": "na1-ab12-cd34-ef56-gh78-abcdef123456",
    "hub_id": 62515, "scopes": ["oauth", "crm.objects.contacts.write", "crm.objects.contacts.read"],
    "access_token": "AAA1234-TOKEN", "expires_in": 1800,
}


def test_scopes_array_is_kept() -> None:
    token = parse_token(DOCUMENTED)
    assert token.scopes == ("oauth", "crm.objects.contacts.write", "crm.objects.contacts.read")
    assert token.access_token == "AAA1234-TOKEN"
    assert token.refresh_token == "na1-ab12-cd34-ef56-gh78-abcdef123456"
    assert token.expires_in == 1800
    assert token.raw["hub_id"] == 62515


def test_response_without_scopes_array_falls_back_to_standard() -> None:
    raw = {k: v for k, v in DOCUMENTED.items() if k != "scopes"} | {"scope": "oauth"}
    assert parse_token(raw).scopes == ("oauth",)


@pytest.mark.parametrize("scopes", ["oauth crm.objects.contacts.read", [1, 2], None])
def test_malformed_scopes_are_not_trusted(scopes: object) -> None:
    token = parse_token({**DOCUMENTED, "scopes": scopes})
    assert token.scopes == ()


def test_error_body_is_refused() -> None:
    # The date-versioned endpoints answer errors in RFC 6749 form.
    with pytest.raises(TokenError) as refused:
        parse_token({"error": "invalid_grant", "error_description": "code has expired"})
    assert refused.value.code == "invalid_grant"


def test_missing_access_token_is_refused() -> None:
    with pytest.raises(TokenError):
        parse_token({k: v for k, v in DOCUMENTED.items() if k != "access_token"})
