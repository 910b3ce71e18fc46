"""The fake providers in tests/fakes/, driven over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import secrets
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx2
import pytest

from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import (
    CLIENT_ID,
    CLIENT_SECRET,
    MAILGUN_KEY,
    POSTMARK_INVALID,
    POSTMARK_MISSING,
    POSTMARK_TOKEN,
    FakeState,
    make_app,
    shopify_hmac,
)
from tests.fakes.server import serve

CALLBACK = "http://127.0.0.1:9/callback?keep=1"  # never fetched: redirects are read, not followed
SHOP = "acme.myshopify.com"

Fakes = tuple[str, FakeState]


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=5, trust_env=False) as client:
        yield client


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(http: httpx2.Client, base: str, **extra: str) -> dict[str, str]:
    """Run /oauth2/authorize with auto_approve on and return the callback's query."""
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": CALLBACK,
              "state": "st-1", "scope": "read write", **extra}
    response = http.get(f"{base}/oauth2/authorize", params=params)
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith("http://127.0.0.1:9/callback?")
    return dict(parse_qsl(urlsplit(location).query))


def exchange(http: httpx2.Client, base: str, code: str, **extra: str) -> httpx2.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, **extra}
    return http.post(f"{base}/oauth2/token", data=data, auth=(CLIENT_ID, CLIENT_SECRET))


def refresh(http: httpx2.Client, base: str, token: str) -> httpx2.Response:
    return http.post(f"{base}/oauth2/token", auth=(CLIENT_ID, CLIENT_SECRET),
                     data={"grant_type": "refresh_token", "refresh_token": token})


# --- generic OAuth 2.0 -------------------------------------------------------------------------

def test_code_flow_with_pkce_and_refresh_rotation(fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    state.auto_approve = True
    verifier, challenge = pkce_pair()
    callback = authorize(http, base, code_challenge=challenge, code_challenge_method="S256")
    assert callback["keep"] == "1" and callback["state"] == "st-1"
    assert state.authorize_requests[-1]["code_challenge"] == challenge

    response = exchange(http, base, callback["code"], code_verifier=verifier)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    assert tokens["scope"] == "read write"
    assert tokens["access_token"].startswith("at-") and tokens["refresh_token"].startswith("rt-")
    recorded = state.token_requests[-1]
    assert recorded["grant_type"] == "authorization_code"
    assert recorded["headers"]["authorization"].startswith("Basic ")
    assert recorded["body"]["code_verifier"] == verifier

    me = http.get(f"{base}/oauth2/userinfo",
                  headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200 and me.json() == {"id": "user-1"}

    renewed = refresh(http, base, tokens["refresh_token"])
    assert renewed.status_code == 200
    new_refresh = renewed.json()["refresh_token"]
    assert new_refresh != tokens["refresh_token"]
    old = refresh(http, base, tokens["refresh_token"])  # rotated away
    assert (old.status_code, old.json()["error"]) == (400, "invalid_grant")
    assert refresh(http, base, new_refresh).status_code == 200


@pytest.mark.parametrize("case", ["wrong_verifier", "missing_verifier", "reuse", "redirect_uri"])
def test_code_exchange_failures_are_invalid_grant(fakes: Fakes, http: httpx2.Client,
                                                  case: str) -> None:
    base, state = fakes
    state.auto_approve = True
    verifier, challenge = pkce_pair()
    code = authorize(http, base, code_challenge=challenge, code_challenge_method="S256")["code"]
    if case == "wrong_verifier":
        response = exchange(http, base, code, code_verifier=pkce_pair()[0])
    elif case == "missing_verifier":
        response = exchange(http, base, code)
    elif case == "reuse":
        assert exchange(http, base, code, code_verifier=verifier).status_code == 200
        response = exchange(http, base, code, code_verifier=verifier)
    else:
        response = exchange(http, base, code, code_verifier=verifier,
                            redirect_uri="http://127.0.0.1:9/other")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
    # The code is spent even by a failed exchange.
    assert exchange(http, base, code, code_verifier=verifier).status_code == 400


def test_verifier_without_challenge_is_accepted(fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    state.auto_approve = True
    code = authorize(http, base)["code"]
    assert exchange(http, base, code, code_verifier=pkce_pair()[0]).status_code == 200


@pytest.mark.parametrize(("query", "problem"), [
    ({"client_id": "someone-else"}, "unknown client_id"),
    ({"redirect_uri": ""}, "redirect_uri is required"),
    ({"response_type": "token"}, "response_type must be code"),
])
def test_bad_authorize_requests_get_a_400_page(fakes: Fakes, http: httpx2.Client,
                                               query: dict[str, str], problem: str) -> None:
    base, state = fakes
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": CALLBACK, **query}
    response = http.get(f"{base}/oauth2/authorize", params=params)
    assert response.status_code == 400 and problem in response.text
    assert state.authorize_requests[-1] == params


def test_consent_page_approve_and_deny(fakes: Fakes, http: httpx2.Client) -> None:
    base, _ = fakes
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": CALLBACK,
              "state": "a&b <c>", "scope": "read"}
    page = http.get(f"{base}/oauth2/authorize", params=params)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<button id="approve" name="decision" value="approve">Approve</button>' in page.text
    assert '<button id="deny" name="decision" value="deny">Deny</button>' in page.text
    assert not re.search(r"<script|src=|href=", page.text)  # no external resources
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action and action.group(1) == "/oauth2/consent"
    hidden = {html.unescape(k): html.unescape(v) for k, v in
              re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text)}
    assert hidden == params

    approved = http.post(f"{base}/oauth2/consent", data={**hidden, "decision": "approve"})
    assert approved.status_code == 302
    query = parse_qs(urlsplit(approved.headers["location"]).query)
    assert query["state"] == ["a&b <c>"] and query["code"]

    denied = http.post(f"{base}/oauth2/consent", data={**hidden, "decision": "deny"})
    assert denied.status_code == 302
    query = parse_qs(urlsplit(denied.headers["location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == ["a&b <c>"]
    assert "code" not in query


def test_state_is_omitted_when_absent(fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    state.auto_approve = True
    response = http.get(f"{base}/oauth2/authorize", params={
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": CALLBACK})
    assert "state" not in parse_qs(urlsplit(response.headers["location"]).query)


@pytest.mark.parametrize(("setting", "sent", "status"), [
    ("any", "basic", 200),
    ("any", "post", 200),
    ("client_secret_basic", "basic", 200),
    ("client_secret_basic", "post", 401),
    ("client_secret_post", "post", 200),
    ("client_secret_post", "basic", 401),
    ("any", "both", 401),
    ("any", "none", 401),
    ("any", "wrong_secret", 401),
])
def test_client_authentication(fakes: Fakes, http: httpx2.Client, setting: str, sent: str,
                               status: int) -> None:
    base, state = fakes
    state.auto_approve, state.client_auth_method = True, setting
    data = {"grant_type": "authorization_code", "code": authorize(http, base)["code"],
            "redirect_uri": CALLBACK}
    auth = None
    if sent in ("basic", "both"):
        auth = (CLIENT_ID, CLIENT_SECRET)
    if sent in ("post", "both"):
        data |= {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    if sent == "wrong_secret":
        data |= {"client_id": CLIENT_ID, "client_secret": "nope"}
    response = http.post(f"{base}/oauth2/token", data=data, auth=auth)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"] == "invalid_client"


def test_json_token_requests_need_accept_json(fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    state.auto_approve = True
    body = {"grant_type": "authorization_code", "code": authorize(http, base)["code"],
            "redirect_uri": CALLBACK, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    refused = http.post(f"{base}/oauth2/token", json=body)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_request")
    state.accept_json = True
    accepted = http.post(f"{base}/oauth2/token", json=body)
    assert accepted.status_code == 200 and accepted.json()["access_token"]
    assert state.token_requests[-1]["content_type"] == "application/json"


@pytest.mark.parametrize("mode", ["server_error", "invalid_grant", "not_json", "no_access_token",
                                  "slow"])
def test_token_modes(fakes: Fakes, http: httpx2.Client, mode: str) -> None:
    base, state = fakes
    state.auto_approve = True
    code = authorize(http, base)["code"]
    state.token_mode, state.slow_seconds = mode, 0.3
    started = time.monotonic()
    response = exchange(http, base, code)
    assert len(state.token_requests) == 1  # recorded whatever the outcome
    if mode == "server_error":
        assert response.status_code == 500 and response.headers["content-type"].startswith("text/")
    elif mode == "invalid_grant":
        assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
    elif mode == "not_json":
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
    elif mode == "no_access_token":
        assert response.status_code == 200 and "access_token" not in response.json()
    else:
        assert time.monotonic() - started >= 0.3
        assert response.status_code == 200 and response.json()["access_token"]


def test_token_mode_hang(fakes: Fakes) -> None:
    base, state = fakes
    state.token_mode = "hang"
    with httpx2.Client(timeout=0.3, trust_env=False) as client, pytest.raises(httpx2.ReadTimeout):
        client.post(f"{base}/oauth2/token", data={"grant_type": "refresh_token"})
    assert state.token_requests[-1]["grant_type"] == "refresh_token"
    # The fixture's reset() releases the parked handler.


def test_revocation(fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    state.auto_approve = True
    tokens = exchange(http, base, authorize(http, base)["code"]).json()
    response = http.post(f"{base}/oauth2/revoke", auth=(CLIENT_ID, CLIENT_SECRET),
                         data={"token": tokens["access_token"], "token_type_hint": "access_token"})
    assert response.status_code == 200 and response.content == b""
    assert state.revoke_requests[-1]["body"]["token"] == tokens["access_token"]
    me = http.get(f"{base}/oauth2/userinfo",
                  headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 401


# --- Shopify -----------------------------------------------------------------------------------

def test_shopify_hmac_matches_the_documented_example() -> None:
    # Shopify's docs example: secret "hush" over code, shop, state and timestamp.
    params = {"code": "0907a61c0c8d55e99db179b68161bc00", "shop": "some-shop.myshopify.com",
              "state": "0.6784241404160823", "timestamp": "1337178173"}
    assert shopify_hmac({**params, "hmac": "ignored"}, "hush") == (
        "700e2dadb827fcc8609e9d5ce208b2e9cdaab9df07390d2cbca10d7c328fc4bf")


def shopify_install(http: httpx2.Client, base: str, **extra: str) -> tuple[str, dict[str, str]]:
    params = {"client_id": CLIENT_ID, "scope": "read_orders,write_orders",
              "redirect_uri": CALLBACK, "state": "nonce-1", **extra}
    response = http.get(f"{base}/shopify/{SHOP}/admin/oauth/authorize", params=params)
    assert response.status_code == 302
    query = urlsplit(response.headers["location"]).query
    return query, dict(parse_qsl(query))


def expected_hmac(query: str) -> str:
    """Recomputed independently: drop hmac, sort, join k=v with &, HMAC-SHA256, hex."""
    pairs = sorted((k, v) for k, v in parse_qsl(query) if k != "hmac")
    message = "&".join(f"{k}={v}" for k, v in pairs)
    return hmac.new(CLIENT_SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()


def test_shopify_install_exchange_and_health_check(fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    state.auto_approve = True
    query, callback = shopify_install(http, base)
    assert list(callback) == ["keep", "code", "hmac", "host", "shop", "state", "timestamp"]
    assert callback["hmac"] == expected_hmac(query)
    assert callback["shop"] == SHOP and callback["state"] == "nonce-1"
    assert base64.b64decode(callback["host"] + "==") == f"{SHOP}/admin".encode()
    assert abs(int(callback["timestamp"]) - time.time()) < 5
    assert state.shopify_authorize_requests[-1]["scope"] == "read_orders,write_orders"

    url = f"{base}/shopify/{SHOP}/admin/oauth/access_token"
    body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": callback["code"],
            "expiring": "1"}
    response = http.post(url, data=body)
    assert response.status_code == 200
    tokens = response.json()
    assert set(tokens) == {"access_token", "scope", "expires_in", "refresh_token",
                           "refresh_token_expires_in"}  # Shopify sends no token_type
    assert re.fullmatch(r"shpat_[0-9a-f]{32}", tokens["access_token"])
    assert tokens["scope"] == "read_orders,write_orders" and tokens["expires_in"] == 3600
    assert tokens["refresh_token_expires_in"] == 7776000

    reused = http.post(url, data=body)
    assert reused.status_code == 400
    assert reused.json() == {"error": "invalid_request", "error_description":
                             "The authorization code was not found or was already used"}

    graphql = f"{base}/shopify/{SHOP}/admin/api/2025-10/graphql.json"
    query_body = {"query": "{ shop { name myshopifyDomain } }"}
    ok = http.post(graphql, json=query_body,
                   headers={"X-Shopify-Access-Token": tokens["access_token"]})
    assert ok.status_code == 200 and ok.json()["data"]["shop"]["myshopifyDomain"] == SHOP
    bad = http.post(graphql, json=query_body, headers={"X-Shopify-Access-Token": "shpat_nope"})
    assert bad.status_code == 401 and "Invalid API key or access token" in bad.json()["errors"]
    assert state.api_requests[-2]["headers"]["x-shopify-access-token"] == tokens["access_token"]


def test_shopify_json_exchange_without_expiring(fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    state.auto_approve = True
    _, callback = shopify_install(http, base)
    response = http.post(f"{base}/shopify/{SHOP}/admin/oauth/access_token", json={
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": callback["code"]})
    assert set(response.json()) == {"access_token", "scope"}
    wrong = http.post(f"{base}/shopify/{SHOP}/admin/oauth/access_token", json={
        "client_id": CLIENT_ID, "client_secret": "nope", "code": callback["code"]})
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_request")


def test_shopify_refresh_keeps_the_old_token_until_the_new_one_is_used(
        fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    state.auto_approve = True
    url = f"{base}/shopify/{SHOP}/admin/oauth/access_token"
    _, callback = shopify_install(http, base)
    creds = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    first = http.post(url, data={**creds, "code": callback["code"], "expiring": "1"}).json()

    def use(token: str) -> httpx2.Response:
        return http.post(url, data={**creds, "grant_type": "refresh_token",
                                    "refresh_token": token})

    second = use(first["refresh_token"]).json()
    assert use(first["refresh_token"]).status_code == 200  # replacement not used yet
    assert use(second["refresh_token"]).status_code == 200
    assert use(first["refresh_token"]).json()["error"] == "invalid_grant"


def test_shopify_tamper_and_timestamp_knobs(fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    state.auto_approve = True
    state.shopify_tamper_hmac, state.shopify_timestamp_offset = True, -3600
    query, callback = shopify_install(http, base)
    assert callback["hmac"] != expected_hmac(query)
    assert int(callback["timestamp"]) < time.time() - 3500


def test_shopify_consent_page(fakes: Fakes, http: httpx2.Client) -> None:
    base, _ = fakes
    page = http.get(f"{base}/shopify/{SHOP}/admin/oauth/authorize", params={
        "client_id": CLIENT_ID, "scope": "read_orders", "redirect_uri": CALLBACK, "state": "n"})
    assert 'id="approve"' in page.text and 'id="deny"' in page.text
    assert f'action="/shopify/{SHOP}/admin/oauth/consent"' in page.text
    bad_shop = http.get(f"{base}/shopify/evil.example.com/admin/oauth/authorize", params={
        "client_id": CLIENT_ID, "redirect_uri": CALLBACK})
    assert bad_shop.status_code == 400


# --- API-key providers and the product app -----------------------------------------------------

def test_postmark(fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    url = f"{base}/postmark/server"
    ok = http.get(url, headers={"X-Postmark-Server-Token": POSTMARK_TOKEN,
                                "Accept": "application/json"})
    assert ok.status_code == 200 and ok.json()["ApiTokens"] == [POSTMARK_TOKEN]
    bad = http.get(url, headers={"X-Postmark-Server-Token": "00000000-0000-0000-0000-000000000000"})
    assert bad.status_code == 401 and bad.json() == {"ErrorCode": 10, "Message": POSTMARK_INVALID}
    bearer = http.get(url, headers={"Authorization": f"Bearer {POSTMARK_TOKEN}"})
    assert bearer.status_code == 401 and bearer.json()["Message"] == POSTMARK_MISSING
    assert [r["provider"] for r in state.api_requests] == ["postmark"] * 3


@pytest.mark.parametrize(("auth", "status"), [
    (("api", MAILGUN_KEY), 200), (("api", "key-bad"), 401), (("user", MAILGUN_KEY), 401),
    (None, 401)])
def test_mailgun(fakes: Fakes, http: httpx2.Client, auth: tuple[str, str] | None,
                 status: int) -> None:
    base, state = fakes
    response = http.get(f"{base}/mailgun/v4/domains", auth=auth)
    assert response.status_code == status
    if status == 200:
        assert response.json()["total_count"] == 1 and response.json()["items"][0]["name"]
    else:
        assert response.json() == {"message": "Invalid private key"}
    assert state.api_requests[-1]["path"] == "/mailgun/v4/domains"


def test_app_done_escapes_html(fakes: Fakes, http: httpx2.Client) -> None:
    base, state = fakes
    page = http.get(f"{base}/app/done", params={"status": "<b>ok</b>", "provider": "a&b"})
    assert '<h1 id="result">&lt;b&gt;ok&lt;/b&gt;</h1>' in page.text
    assert '<p id="provider">a&amp;b</p>' in page.text
    assert state.returns == [{"status": "<b>ok</b>", "provider": "a&b"}]


def test_reset_restores_defaults(fakes: Fakes) -> None:
    _, state = fakes
    state.token_mode, state.auto_approve = "hang", True
    state.postmark_tokens.add("x")
    state.returns.append({})
    state.reset()
    assert state.token_mode == "ok" and not state.auto_approve
    assert state.postmark_tokens == {POSTMARK_TOKEN} and state.returns == []


def test_serve_stops_cleanly() -> None:
    app, _ = make_app()
    with serve(app) as url, httpx2.Client(trust_env=False) as client:
        assert url.startswith("http://127.0.0.1:")
        assert client.get(f"{url}/app/done").status_code == 200
    with httpx2.Client(trust_env=False) as client, pytest.raises(httpx2.ConnectError):
        client.get(f"{url}/app/done")
