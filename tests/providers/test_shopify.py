"""Shopify's validate_callback hook: the callback's hex HMAC-SHA256 over the other query
parameters (sorted, ``k=v`` joined by ``&``), its timestamp and its shop, checked before the
code is sent anywhere. The shapes follow Shopify's "Verify a request" documentation."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from broker.spec import Callback, CallbackError
from providers.shopify import CLOCK_TOLERANCE, provider, validate_callback

SECRET = "hush-7f0c2c1e9b4a"
SHOP = "acme.myshopify.com"


def signed(params: list[tuple[str, str]], secret: str = SECRET) -> list[tuple[str, str]]:
    message = "&".join(f"{k}={v}" for k, v in sorted(params))
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return [*params, ("hmac", digest)]


def callback_query(*, shop: str = SHOP, timestamp: int | None = None,
                   extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return signed([
        ("code", "0907a61c0c8d55e99db179b68161bc00"),
        ("host", "YWNtZS5teXNob3BpZnkuY29tL2FkbWlu"),
        ("shop", shop),
        ("state", "0.6784241404160823"),
        ("timestamp", str(int(time.time()) if timestamp is None else timestamp)),
        *(extra or []),
    ])


def check(query: list[tuple[str, str]], shop: str = SHOP, secret: str = SECRET) -> None:
    validate_callback(Callback(query=query, client_secret=secret, inputs={"shop": shop}))


def test_hook_is_declared() -> None:
    assert provider.hooks.validate_callback is validate_callback


def test_good_hmac_passes() -> None:
    check(callback_query())


def test_parameter_order_does_not_matter() -> None:
    check(list(reversed(callback_query())))


def test_legacy_signature_parameter_is_left_out_of_the_message() -> None:
    query = callback_query()
    check([("signature", "f477a85f3ed6027735589159f9da74da"), *query])


def test_shop_is_compared_case_insensitively() -> None:
    check(callback_query(), shop="ACME.myshopify.com")


@pytest.mark.parametrize("key,value", [
    ("code", "attacker-code"),
    ("shop", "evil.myshopify.com"),
    ("state", "forged"),
    ("timestamp", "1"),
])
def test_tampered_parameter_is_refused(key: str, value: str) -> None:
    query = [(k, value if k == key else v) for k, v in callback_query()]
    with pytest.raises(CallbackError, match="signature"):
        check(query)


def test_added_parameter_is_refused() -> None:
    with pytest.raises(CallbackError, match="signature"):
        check([("admin", "true"), *callback_query()])


def test_wrong_secret_and_missing_hmac_are_refused() -> None:
    with pytest.raises(CallbackError, match="signature"):
        check(callback_query(), secret="another-app-secret")
    with pytest.raises(CallbackError, match="signature"):
        check([(k, v) for k, v in callback_query() if k != "hmac"])


def test_uppercase_hex_is_not_shopifys_encoding() -> None:
    query = [(k, v.upper() if k == "hmac" else v) for k, v in callback_query()]
    with pytest.raises(CallbackError):
        check(query)


@pytest.mark.parametrize("age", [CLOCK_TOLERANCE + 5, 24 * 3600, -(CLOCK_TOLERANCE + 5)])
def test_stale_or_future_timestamp_is_refused(age: int) -> None:
    with pytest.raises(CallbackError, match="too old"):
        check(callback_query(timestamp=int(time.time()) - age))


def test_timestamp_within_tolerance_passes() -> None:
    check(callback_query(timestamp=int(time.time()) - CLOCK_TOLERANCE + 10))


def test_unreadable_timestamp_is_refused() -> None:
    query = signed([(k, v) for k, v in callback_query() if k not in ("hmac", "timestamp")]
                   + [("timestamp", "soon")])
    with pytest.raises(CallbackError, match="too old"):
        check(query)


def test_repeated_parameter_is_refused() -> None:
    # Two values for one key: a validator that keeps the first and one that keeps the last
    # would sign different messages, so a repeated key is never accepted (even if signed).
    query = callback_query()
    with pytest.raises(CallbackError, match="repeated"):
        check([*query, ("shop", "evil.myshopify.com")])
    with pytest.raises(CallbackError, match="repeated"):
        check([*query, ("shop", SHOP)])


def test_other_shop_is_refused_even_when_signed() -> None:
    # Correctly signed by the app's secret, but for a different store than the one pinned
    # when the flow started.
    with pytest.raises(CallbackError, match="another shop"):
        check(callback_query(shop="other.myshopify.com"))


@pytest.mark.parametrize("shop", ["acme.myshopify.com.evil.io", "evil.io", "-acme.myshopify.com"])
def test_shop_outside_myshopify_is_refused(shop: str) -> None:
    with pytest.raises(CallbackError, match="another shop"):
        check(callback_query(shop=shop), shop=shop)


def test_a_previous_secret_is_accepted_while_the_secret_rotates() -> None:
    # Signed by Shopify with the old secret, checked by a broker that has the new one too.
    query = signed([p for p in callback_query() if p[0] != "hmac"], secret="old-secret")
    with pytest.raises(CallbackError):
        check(query)  # the current secret alone refuses it
    validate_callback(Callback(query=query, client_secret=SECRET, inputs={"shop": SHOP},
                               previous_secrets=("old-secret",)))
    with pytest.raises(CallbackError):
        validate_callback(Callback(query=query, client_secret=SECRET, inputs={"shop": SHOP},
                                   previous_secrets=("another",)))
