"""The plugin API's surface is pinned: a change to it is a deliberate change to this test."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from broker import spec


def test_exported_members() -> None:
    assert sorted(spec.__all__) == sorted([
        "Action", "ApiKeyProvider", "Basic", "BasicAuthProvider", "Callback", "CallbackError",
        "Connected",
        "Field", "Header", "Hooks", "OAuth2Provider", "Provider", "ProviderError", "Request",
        "SetupType", "TokenError", "TokenResponse", "WebhookProvider", "standard_token"])
    assert all(hasattr(spec, name) for name in spec.__all__)


def test_authlib_has_the_state_binding_fixes() -> None:
    # CVE-2025-68158 and CVE-2026-41425 (state not bound to the browser) are fixed in 1.6.11.
    major, minor, patch = (int(p) for p in version("authlib").split(".")[:3])
    assert (major, minor, patch) >= (1, 6, 11)


@pytest.mark.parametrize(("raw", "expected"), [
    ({"access_token": "a", "token_type": "Bearer", "expires_in": 3600, "scope": "a b"},
     ("a", 3600, ("a", "b"))),
    ({"access_token": "a", "token_type": "bearer", "expires_in": "60", "scope": "x,y"},
     ("a", 60, ("x", "y"))),
    ({"access_token": "a", "expires_in": 0}, ("a", None, ())),  # 0: does not expire
    ({"access_token": "a", "expires_in": 3599.0}, ("a", 3599, ())),
])
def test_standard_token(raw: dict[str, object], expected: tuple[object, ...]) -> None:
    token = spec.standard_token(raw)
    assert (token.access_token, token.expires_in, token.scopes) == expected


def test_token_repr_hides_tokens() -> None:
    token = spec.standard_token({"access_token": "AT-REPR-SENTINEL",
                                 "refresh_token": "RT-REPR-SENTINEL"})
    assert "SENTINEL" not in repr(token) and "SENTINEL" not in str(token)


@pytest.mark.parametrize("raw", [
    {"error": "invalid_grant"}, {"token_type": "bearer"}, {"access_token": ""},
    {"access_token": 5}, {"access_token": "a", "token_type": "mac"},
])
def test_standard_token_refuses(raw: dict[str, object]) -> None:
    with pytest.raises(spec.TokenError):
        spec.standard_token(raw)
