"""Square: OAuth 2.0 code flow; the token response gives ``expires_at``, not ``expires_in``.

https://developer.squareup.com/docs/oauth-api/overview
"""

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from broker.spec import (
    Action,
    Hooks,
    OAuth2Provider,
    Request,
    TokenError,
    TokenResponse,
    standard_token,
)

# Square API version for the health check (Square-Version header).
SQUARE_VERSION = "2025-01-23"


def parse_token(raw: Mapping[str, Any], now: datetime | None = None) -> TokenResponse:
    # ObtainToken answers with an ISO 8601 ``expires_at`` and no ``expires_in``, and reports
    # failures as {"errors": [{"category", "code", "detail"}]} or {"message", "type"}:
    # https://developer.squareup.com/reference/square/objects/ObtainTokenResponse
    errors = raw.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], Mapping) else {}
        code = str(first.get("code") or "invalid_grant")[:64]
        raise TokenError(f"the provider refused: {code}", code.lower())
    if "access_token" not in raw and isinstance(raw.get("type"), str):
        raise TokenError(f"the provider refused: {raw['type'][:100]}", raw["type"][:64])
    token = standard_token(raw)
    return replace(token, expires_in=_until(raw.get("expires_at"), now or datetime.now(UTC)))


def _until(expires_at: Any, now: datetime) -> int:
    if not isinstance(expires_at, str) or not expires_at:
        raise TokenError("the token response has no expires_at")
    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        raise TokenError("the token response has an unreadable expires_at") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # An already expired token still comes with a valid refresh token: refresh it at once.
    return max(1, int((when - now).total_seconds()))


provider = OAuth2Provider(
    slug="square",
    name="Square",
    category="payments",
    description="Payments, refunds, orders and customers of a Square seller.",
    docs_url="https://developer.squareup.com/docs/oauth-api/overview",
    authorize_url="https://connect.squareup.com/oauth2/authorize",
    token_url="https://connect.squareup.com/oauth2/token",
    # Square documents a JSON body, but the broker sends JSON only with client_secret_basic
    # and Square wants the secret in the body; it also accepts the form body (Nango's flow).
    # Revocation needs "Authorization: Client <secret>", which no revoke_style covers.
    scopes=("MERCHANT_PROFILE_READ", "PAYMENTS_READ", "PAYMENTS_WRITE", "ORDERS_READ",
            "CUSTOMERS_READ"),
    scope_separator=" ",
    # The code flow (confidential client, stable refresh token); PKCE would make Square treat
    # the app as a public client with single-use refresh tokens.
    pkce=False,
    client_auth_method="client_secret_post",
    # Show the login page instead of silently reusing a browser session of another seller.
    authorize_params={"session": "false"},
    token_metadata=("merchant_id",),
    hooks=Hooks(parse_token=parse_token),
    health_check=Request(url="https://connect.squareup.com/v2/locations",
                         headers={"Square-Version": SQUARE_VERSION}),
    actions=(
        Action(name="payments.read", description="Read payments."),
        Action(name="refunds.create", description="Refund a payment."),
        Action(name="orders.read", description="Read orders."),
        Action(name="customers.read", description="Look up customers."),
    ),
)
