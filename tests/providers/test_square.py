"""Square's parse_token hook on the documented ObtainToken shapes: ``expires_at`` (ISO 8601)
instead of ``expires_in``, and errors as an ``errors`` list or a ``message``/``type`` pair."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.spec import TokenError
from providers.square import parse_token

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
DOCUMENTED = json.loads(
    (Path(__file__).parent / "fixtures" / "square" / "token.json").read_text())


def token(**changes: object) -> dict[str, object]:
    return {**DOCUMENTED, **changes}


def test_expires_at_becomes_seconds_from_now() -> None:
    parsed = parse_token(token(expires_at="2027-01-03T12:00:00Z"), now=NOW)
    assert parsed.expires_in == 30 * 24 * 3600
    assert parsed.access_token == DOCUMENTED["access_token"]
    assert parsed.refresh_token == DOCUMENTED["refresh_token"]
    assert parsed.raw["merchant_id"] == "ML6KD9HN3QW2A"


def test_offsets_and_fractions_are_read() -> None:
    parsed = parse_token(token(expires_at="2026-12-05T13:00:00.500+01:00"), now=NOW)
    assert parsed.expires_in == 24 * 3600


def test_naive_timestamp_is_utc() -> None:
    assert parse_token(token(expires_at="2026-12-04T13:00:00"), now=NOW).expires_in == 3600


def test_short_lived_token() -> None:
    parsed = parse_token(token(expires_at="2026-12-05T12:00:00Z", short_lived=True), now=NOW)
    assert parsed.expires_in == 24 * 3600


def test_expired_or_expiring_now_asks_for_an_immediate_refresh() -> None:
    # The documented example date is long past: never "no expiry", always refresh at once.
    assert parse_token(DOCUMENTED, now=NOW).expires_in == 1
    assert parse_token(token(expires_at="2026-12-04T12:00:00Z"), now=NOW).expires_in == 1


def test_default_clock() -> None:
    assert parse_token(token(expires_at="2999-01-01T00:00:00Z")).expires_in > 10**9


@pytest.mark.parametrize("value", [None, "", "next tuesday", 1735689600])
def test_missing_or_unreadable_expires_at_is_refused(value: object) -> None:
    with pytest.raises(TokenError):
        parse_token(token(expires_at=value), now=NOW)


def test_errors_list() -> None:
    body = {"errors": [{"category": "AUTHENTICATION_ERROR", "code": "UNAUTHORIZED",
                        "detail": "Authorization code is already redeemed"}]}
    with pytest.raises(TokenError) as refused:
        parse_token(body, now=NOW)
    assert refused.value.code == "unauthorized"


def test_message_and_type() -> None:
    body = {"message": "Authorization code is already redeemed", "type": "bad_request"}
    with pytest.raises(TokenError) as refused:
        parse_token(body, now=NOW)
    assert refused.value.code == "bad_request"


def test_oauth_error_and_missing_token() -> None:
    with pytest.raises(TokenError) as refused:
        parse_token({"error": "invalid_grant"}, now=NOW)
    assert refused.value.code == "invalid_grant"
    with pytest.raises(TokenError):
        parse_token({"token_type": "bearer", "expires_at": "2027-01-03T12:00:00Z"}, now=NOW)
