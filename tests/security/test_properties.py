"""Property-based tests (Hypothesis) of the broker's security-relevant pure functions, as the
checklist's tools section suggests: AAD swaps (KS-02), blob tampering (KS-03), API key shape
(AK-01, AK-02), return URLs without a parser differential (OA-07), Shopify shop hosts
(OA-12), provider identifiers (IV-02) and log redaction (LG-01, LG-02).

Every property runs a bounded, derandomized number of examples (the same ones on every run,
no example database), so the module is deterministic and takes a few seconds."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import httpx2
import pytest
import urllib3.util
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from broker import apikeys
from broker.credentials_form import check_inputs
from broker.crypto import FORMAT_VERSION, Key, KeyRing, RowContext, _aad
from broker.errors import CryptoError, NotFound, Unprocessable
from broker.flow import fill
from broker.http import logged_query
from broker.logs import redact
from broker.routes.api import MAX_SLUG, catalog_provider, check_return_url
from broker.spec import Provider
from providers.shopify import provider as shopify


def bounded(n: int) -> settings:
    """``n`` examples, the same ones every run, no deadline (crypto and regexes on long
    inputs vary with the machine's load) and no example database written to the tree."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- KS-02, KS-03: associated data and blobs -----------------------------------------------

# Characters a naive encoding would treat as structure: separators, NULs and bytes that look
# like a big-endian length prefix, mixed with ordinary and non-ASCII text.
TRICKY = st.sampled_from(list("ab|:/,;=\x00\x01\x04\n") + ["é", "\u2028", "\U0001f511"])
PART = st.text(alphabet=TRICKY | st.characters(codec="utf-8"), max_size=8)
CONTEXT = st.tuples(PART, PART, PART, PART, PART)  # key id, project, provider, id, field


def aad_of(parts: tuple[str, ...]) -> bytes:
    kid, project, provider, integration, field = parts
    return _aad(kid, RowContext(project, provider, integration), field)


def decode_aad(raw: bytes) -> list[str]:
    """The length-prefixed encoding read back; raises if it is not one."""
    out, at = [], 0
    while at < len(raw):
        n = int.from_bytes(raw[at:at + 4], "big")
        assert at + 4 + n <= len(raw), "a length runs past the end"
        out.append(raw[at + 4:at + 4 + n].decode())
        at += 4 + n
    return out


@bounded(300)
@given(CONTEXT)
def test_ks_02_aad_reads_back_as_exactly_its_context(parts: tuple[str, ...]) -> None:
    # A left inverse exists, so the encoding is injective over every context.
    assert decode_aad(aad_of(parts)) == [str(FORMAT_VERSION), *parts]


# A run of one character a naive encoding would use as a separator or a terminator.
SEPARATORS = st.builds(lambda c, n: c * n, st.sampled_from("|:/,;=\x00\x01\x04\n"),
                       st.integers(1, 3))


@bounded(300)
@given(CONTEXT, st.integers(0, 3), SEPARATORS | PART.filter(bool))
def test_ks_02_characters_moved_across_a_field_boundary_change_the_aad(
        parts: tuple[str, ...], i: int, moved: str) -> None:
    # ("x|", "y") and ("x", "|y") join to the same "x||y": the classic ambiguity.
    left, right = list(parts), list(parts)
    left[i] += moved
    right[i + 1] = moved + right[i + 1]
    assert aad_of(tuple(left)) != aad_of(tuple(right))


# Pairs of contexts over a two-letter alphabet, a letter and a would-be separator, in short
# parts: two independent draws often come close to each other (or collide, if the encoding
# is ambiguous).
NEAR_PAIRS = st.sampled_from("|:/\x00\x01\n").flatmap(lambda sep: st.tuples(
    *[st.tuples(*[st.text(alphabet="a" + sep, max_size=2)] * 5)] * 2))


@bounded(500)
@given(NEAR_PAIRS | st.tuples(CONTEXT, CONTEXT))
def test_ks_02_distinct_contexts_never_share_an_aad(
        pair: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    a, b = pair
    assume(a != b)
    assert aad_of(a) != aad_of(b)


RING = KeyRing([Key("k1", bytes(range(32))), Key("k2", bytes(range(32, 64)))], "k1")
FIELD_NAMES = ("access_token", "refresh_token", "secret_json")
PLAINTEXTS = st.dictionaries(st.sampled_from(FIELD_NAMES),
                             st.binary(max_size=256) | st.none(), min_size=1)
ROW = st.builds(RowContext, PART, PART, PART)


@st.composite
def other_row(draw: st.DrawFn, ctx: RowContext) -> RowContext:
    """``ctx`` with exactly one of its components replaced by a different value."""
    which = draw(st.sampled_from(("project_id", "provider", "integration_id")))
    value = draw(PART.filter(lambda v: v != getattr(ctx, which)))
    return RowContext(**{**vars(ctx), which: value})


@bounded(150)
@given(ROW, PLAINTEXTS)
def test_ks_02_seal_then_open_round_trips_any_plaintext(
        ctx: RowContext, fields: dict[str, bytes | None]) -> None:
    sealed = RING.seal(ctx, fields)
    assert RING.open(ctx, sealed.data_key, sealed.fields) == fields


@bounded(150)
@given(st.data(), ROW, st.binary(max_size=64))
def test_ks_02_a_row_copied_onto_another_row_does_not_open(
        data: st.DataObject, ctx: RowContext, plaintext: bytes) -> None:
    other = data.draw(other_row(ctx))
    sealed = RING.seal(ctx, {"access_token": plaintext})
    with pytest.raises(CryptoError):
        RING.open(other, sealed.data_key, sealed.fields)
    # Nor does one field's blob under the other row's own data key.
    theirs = RING.seal(other, {"access_token": plaintext})
    with pytest.raises(CryptoError):
        RING.open(other, theirs.data_key, sealed.fields)


@bounded(150)
@given(ROW, st.binary(max_size=64), st.permutations(FIELD_NAMES))
def test_ks_02_a_blob_opened_as_another_field_does_not_open(
        ctx: RowContext, plaintext: bytes, names: list[str]) -> None:
    sealed = RING.seal(ctx, {names[0]: plaintext})
    with pytest.raises(CryptoError):
        RING.open(ctx, sealed.data_key, {names[1]: sealed.fields[names[0]]})


@st.composite
def tampered(draw: st.DrawFn, blob: bytes) -> bytes:
    """``blob`` with one byte changed, cut short, or extended."""
    how = draw(st.sampled_from(("flip", "truncate", "extend")))
    if how == "flip":
        at = draw(st.integers(0, len(blob) - 1))
        mask = draw(st.integers(1, 255))
        return blob[:at] + bytes([blob[at] ^ mask]) + blob[at + 1:]
    if how == "truncate":
        return blob[:draw(st.integers(0, len(blob) - 1))]
    return blob + draw(st.binary(min_size=1, max_size=8))


@bounded(300)
@given(st.data(), ROW, st.binary(max_size=64), st.booleans())
def test_ks_03_any_changed_byte_in_either_blob_fails_authentication(
        data: st.DataObject, ctx: RowContext, plaintext: bytes, in_data_key: bool) -> None:
    sealed = RING.seal(ctx, {"access_token": plaintext})
    data_key, blob = sealed.data_key, sealed.fields["access_token"]
    assert blob is not None
    if in_data_key:
        data_key = data.draw(tampered(data_key))
    else:
        blob = data.draw(tampered(blob))
    with pytest.raises(CryptoError):  # a CryptoError: no IndexError, no garbage plaintext
        RING.open(ctx, data_key, {"access_token": blob})


# -- AK-01, AK-02: API keys and service tokens ---------------------------------------------

PREFIXES = st.sampled_from((apikeys.API_KEY_PREFIX, apikeys.SERVICE_TOKEN_PREFIX))
BODY = st.text(alphabet=apikeys.ALPHABET, min_size=apikeys.ID_LEN + apikeys.SECRET_LEN,
               max_size=apikeys.ID_LEN + apikeys.SECRET_LEN)


def well_formed(prefix: str, body: str) -> str:
    # The shape `generate` gives, from drawn rather than random characters (deterministic).
    return f"{prefix}{body}{apikeys._checksum(body)}"


@bounded(50)
@given(PREFIXES)
def test_ak_01_generated_keys_parse_to_their_public_id(prefix: str) -> None:
    public, key = apikeys.generate(prefix)
    assert apikeys.parse(prefix, key) == public
    assert key == well_formed(prefix, key[len(prefix):-apikeys.CHECK_LEN])
    assert apikeys.matches(key, apikeys.digest(key))


@st.composite
def one_character_off(draw: st.DrawFn, key: str) -> str:
    """``key`` with one character replaced, inserted or removed, or cut short or extended."""
    how = draw(st.sampled_from(("replace", "insert", "delete", "truncate", "extend")))
    char = st.sampled_from(apikeys.ALPHABET + "_-+/= \x00é")
    at = draw(st.integers(0, len(key) - 1))
    if how == "replace":
        return key[:at] + draw(char.filter(lambda c: c != key[at])) + key[at + 1:]
    if how == "insert":
        return key[:at] + draw(char) + key[at:]
    if how == "delete":
        return key[:at] + key[at + 1:]
    if how == "truncate":
        return key[:at]
    return key + draw(st.text(alphabet=apikeys.ALPHABET, min_size=1, max_size=8))


@bounded(400)
@given(st.data(), PREFIXES, BODY)
def test_ak_02_a_key_one_character_off_is_refused(data: st.DataObject, prefix: str,
                                                  body: str) -> None:
    key = well_formed(prefix, body)
    assert apikeys.parse(prefix, key) == body[:apikeys.ID_LEN]
    changed = data.draw(one_character_off(key))
    # The checksum (CRC-32, every single-character error) refuses it before any lookup...
    assert apikeys.parse(prefix, changed) is None
    # ... and the stored digest would not match it either.
    assert not apikeys.matches(changed, apikeys.digest(key))


@bounded(300)
@given(PREFIXES, st.text(max_size=70) | PREFIXES.flatmap(
    lambda p: st.text(alphabet=apikeys.ALPHABET + "_é\x00", max_size=60).map(p.__add__)))
def test_ak_02_parse_never_raises_and_names_only_well_formed_ids(prefix: str,
                                                                 presented: str) -> None:
    public = apikeys.parse(prefix, presented)
    if public is not None:
        assert presented == well_formed(prefix, presented[len(prefix):-apikeys.CHECK_LEN])
        assert public == presented[len(prefix):len(prefix) + apikeys.ID_LEN]


# -- OA-07: return URLs --------------------------------------------------------------------

ALLOWLIST = ("https://app.example.test", "http://localhost:8080", "https://dash.example.com:8443")
ORIGINS = {("https", "app.example.test", None), ("http", "localhost", 8080),
           ("https", "dash.example.com", 8443)}
URL_PIECES = ["@", "/", "//", "\\", "?", "#", "%", ":", "[", "]", ".", ";", ",", " ", "\t",
              "\n", "%2e", "%40", "%2f", "%5c", "%00", "%0a", "x", "evil.example",
              "app.example.test", "localhost:8080", "é", "\x00", "\x7f"]
URLS = st.builds(
    lambda *parts: "".join(parts),
    st.sampled_from(["https", "http", "HTTPS", "hTtP", "javascript", "data", "ftp", "",
                     " https", "ht\ttps"]),
    st.sampled_from(["://", ":", ":/", ":///", "//", ":\\\\", ":/\\", "://\\", ""]),
    st.sampled_from(["", "", "", "@", "user@", "user:pw@", ":@", "app.example.test@",
                     "evil.example@", "localhost:8080@", "a%40b@"]),
    st.sampled_from(["app.example.test", "APP.Example.Test", "localhost", "dash.example.com",
                     "evil.example", "app.example.test.evil.example", "app.example.test.",
                     "%61pp.example.test", "[::1]", "127.0.0.1", "app.example.tést",
                     "app.example.test%00", "", "app.example.test\\@evil.example"]),
    st.sampled_from(["", "", ":", ":443", ":80", ":8080", ":08080", ":8443", ":65536",
                     ":-1", ":+8080", ": 8080", ":8080:8080", ":0x1f90"]),
    st.lists(st.sampled_from(URL_PIECES), max_size=6).map("".join),
) | st.text(max_size=40)


def check(url: str) -> str | None:
    """``check_return_url``, with any refusal as None."""
    try:
        return check_return_url(url, ALLOWLIST)
    except Unprocessable:
        return None


@bounded(1500)
@given(URLS)
def test_oa_07_an_accepted_return_url_parses_to_an_allowlisted_origin_in_every_parser(
        url: str) -> None:
    accepted = check(url)
    if accepted is None:
        return
    assert accepted == url
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port) in ORIGINS
    assert parts.username is None and parts.password is None
    assert parts.netloc.lower() == parts.hostname + (f":{parts.port}" if parts.port else "")
    # Other parsers (RFC 3986's urllib3, WHATWG-leaning httpx) read the same origin: no
    # parser differential between the check and whoever follows the redirect.
    other = urllib3.util.parse_url(url)
    assert (other.scheme.lower(), other.host.lower(), other.port) in ORIGINS
    assert other.auth is None
    whatwg = httpx2.URL(url)
    assert (whatwg.scheme, whatwg.host, whatwg.port) in ORIGINS
    assert whatwg.userinfo == b""


@bounded(500)
@given(URLS)
@example("https://app.example.test[")
def test_oa_07_a_malformed_return_url_is_refused_not_raised(url: str) -> None:
    check(url)


@bounded(300)
@given(st.sampled_from(sorted(ALLOWLIST)), st.lists(
    st.sampled_from(["/", "done", "?", "#", "a=b", "&", "%20", "-", "~"]), max_size=6))
def test_oa_07_paths_queries_and_fragments_on_an_allowlisted_origin_are_accepted(
        origin: str, tail: list[str]) -> None:
    # The property above is not vacuous: the origins themselves pass, with any path.
    url = origin + "/" + "".join(tail)
    assert check(url) == url


# -- OA-12: Shopify shop hosts -------------------------------------------------------------

STRICT_SHOP = re.compile(r"[a-z0-9][a-z0-9-]*\.myshopify\.com")
SHOP_LABEL = st.text(alphabet=st.sampled_from(
    list(string.ascii_letters + string.digits + "-._@/#:%?[]\\ ")
    + ["é", "ı", "\u212a", "\uff41", "\uff0e", "\u3002", "\x00", "ß"]), max_size=12)
SHOPS = st.builds(
    lambda pad, label, suffix, end: pad + label + suffix + end,
    st.sampled_from(["", "", " ", "\t", "\u2003"]),
    SHOP_LABEL,
    st.sampled_from([".myshopify.com", ".MyShopify.COM", ".myshopify.com.evil.com",
                     ".myshopify.com.", "%2emyshopify.com", ".myshopify\uff0ecom",
                     "myshopify.com", ".myshopify.co", ".myshopify.com:443",
                     ".myshopify.com@evil.com", ""]),
    st.sampled_from(["", "", " ", "\n", "/", "#x", "?x", "\x00"]),
) | st.text(max_size=30)


@bounded(1500)
@given(SHOPS)
def test_oa_12_an_accepted_shop_is_a_myshopify_host_in_every_url_it_fills(value: str) -> None:
    values, errors = check_inputs(shopify.fields, {"shop": value})
    if errors:
        assert not values
        return
    shop = values["shop"]
    # The checklist's rule: after lower-casing, the shop fullmatches the Shopify pattern.
    assert STRICT_SHOP.fullmatch(shop.lower())
    for name, template in shopify.urls().items():
        if "{shop}" not in template:
            continue
        parts = urlsplit(fill(template, values))
        assert parts.hostname == shop.lower(), name
        assert parts.netloc.lower() == shop.lower(), name  # no userinfo, no port
        assert httpx2.URL(fill(template, values)).host == shop.lower(), name


# -- IV-02: provider identifiers -----------------------------------------------------------

STRICT_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
SEGMENTS = st.text(max_size=80) | st.lists(
    st.sampled_from(list("az09-") + ["/", ".", "..", "*", "\n", "\r", "\x00", "A", "_", " ",
                                     "%2f", "é", "\u0131", "shopify"]),
    max_size=70).map("".join)


class LookupLog(Mapping[str, Provider]):
    """A catalog that records every key it is asked for."""

    def __init__(self, known: Mapping[str, Provider]):
        self.known, self.asked = known, list[str]()

    def __getitem__(self, key: str) -> Provider:
        self.asked.append(key)
        return self.known[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the catalog is never walked to find one provider")

    def __len__(self) -> int:
        return len(self.known)


@bounded(1000)
@given(SEGMENTS)
def test_iv_02_only_well_formed_provider_keys_reach_a_catalog_lookup(segment: str) -> None:
    catalog = LookupLog({"shopify": shopify})
    well_formed = len(segment) <= MAX_SLUG and STRICT_SLUG.fullmatch(segment) is not None
    try:
        found: Any = catalog_provider(catalog, segment)
    except Unprocessable:
        assert not well_formed
        assert catalog.asked == []
        return
    except NotFound:
        found = None
    assert well_formed
    assert catalog.asked == [segment]
    assert found is (shopify if segment == "shopify" else None)


# -- LG-01: the redaction layer ------------------------------------------------------------

SECRET_NAMES = ("code", "state", "access_token", "refresh_token", "id_token", "client_secret",
                "code_verifier", "password", "api_key", "apikey", "secret", "token")
NAMES = st.sampled_from(SECRET_NAMES).flatmap(
    lambda n: st.sampled_from((n, n.upper(), n.title())))
PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                    min_size=6, max_size=40)
TOKEN_SHAPED = st.text(alphabet=string.ascii_letters + string.digits + "-._~+/=",
                       min_size=6, max_size=40)
PLAIN = [("grant_type", "authorization_code"), ("client_id", "client-1"),
         ("redirect_uri", "https://broker.example.test/oauth/acme/callback")]


def secret_pairs(values: st.SearchStrategy[str]) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Secret-named parameters among ordinary ones, in some order."""
    return st.tuples(st.lists(st.tuples(NAMES, values), min_size=1, max_size=4),
                     st.lists(st.sampled_from(PLAIN), max_size=3)).flatmap(
        lambda t: st.permutations(t[0] + t[1]))


def urlencoded(pairs: list[tuple[str, str]], plus: bool) -> str:
    enc = quote_plus if plus else (lambda v: quote(v, safe=""))
    return "&".join(f"{n}={enc(v)}" for n, v in pairs)


def structured(pairs: list[tuple[str, str]], shape: str) -> str:
    doc = dict(pairs)
    if shape == "json":
        return json.dumps(doc)
    if shape == "compact json":
        return json.dumps(doc, separators=(",", ":"))
    return repr(doc)


def masked(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The same pairs with every secret value replaced by one fixed stand-in."""
    return [(n, v if (n, v) in PLAIN else "STANDIN") for n, v in pairs]


@bounded(500)
@given(secret_pairs(PRINTABLE), st.booleans(), st.sampled_from(("", "GET /oauth/acme/callback?",
                                                                "body: ")))
def test_lg_01_secret_values_in_query_strings_and_forms_never_survive_redaction(
        pairs: list[tuple[str, str]], plus: bool, lead: str) -> None:
    line = lead + urlencoded(pairs, plus)
    out = redact(line)
    # What is left does not depend on the secrets at all: not a character of them survives.
    assert out == redact(lead + urlencoded(masked(pairs), plus))
    assert redact(out) == out


@bounded(500)
@given(secret_pairs(TOKEN_SHAPED), st.sampled_from(("json", "compact json", "repr")))
def test_lg_01_token_shaped_secret_values_in_json_and_reprs_never_survive_redaction(
        pairs: list[tuple[str, str]], shape: str) -> None:
    out = redact(structured(pairs, shape))
    assert out == redact(structured(masked(pairs), shape))
    assert redact(out) == out


@bounded(300)
@given(secret_pairs(PRINTABLE), st.sampled_from(("json", "compact json", "repr")))
@example([("password", "correct horse battery staple")], "json")
def test_lg_01_any_printable_secret_value_in_json_and_reprs_never_survives_redaction(
        pairs: list[tuple[str, str]], shape: str) -> None:
    out = redact(structured(pairs, shape))
    # repr() quotes a value holding ' with ": that choice is all that may differ.
    assert out.replace('"[REDACTED]"', "'[REDACTED]'") == redact(
        structured(masked(pairs), shape)).replace('"[REDACTED]"', "'[REDACTED]'")


@bounded(1000)
@given(st.text(max_size=60) | st.lists(st.sampled_from(
    ["code", "state", "token", "Bearer ", "basic", "cookie: ", "set-cookie", "=", ":", " ",
     '"', "'", "\\", "(b'", "authorization", "', b'", "riq_", "rst_", "abcdefghijklmnopqrstuv",
     "[REDACTED]", ",", "&", ";", "}", "\n", "x-api-key", "oauth "]), max_size=14).map("".join))
def test_lg_01_redact_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


# -- LG-02: the access log's query string --------------------------------------------------

QUERY_NAME_CHARS = string.ascii_letters + string.digits + "_.[]-"
RAW_NAMES = st.lists(st.sampled_from(
    list(QUERY_NAME_CHARS) + ["%0A", "%0a", "\n", "+", "%20", "%3D", "%26", "é", "\x00", "%"]),
    max_size=12).map("".join)
RAW_VALUES = st.binary(max_size=30).map(lambda b: b.replace(b"&", b"")) | st.text(
    max_size=30).map(lambda t: t.replace("&", "").encode())


def raw_query(names: list[str], values: list[bytes]) -> bytes:
    return b"&".join(n.encode("latin-1", "replace") + b"=" + v
                     for n, v in zip(names, values, strict=True))


@bounded(400)
@given(st.lists(RAW_NAMES, max_size=25).flatmap(lambda names: st.tuples(
    st.just(names),
    st.lists(RAW_VALUES, min_size=len(names), max_size=len(names)),
    st.lists(RAW_VALUES, min_size=len(names), max_size=len(names)))))
def test_lg_02_the_logged_query_never_depends_on_parameter_values(
        case: tuple[list[str], list[bytes], list[bytes]]) -> None:
    names, values, others = case
    out = logged_query(raw_query(names, values))
    assert out == logged_query(raw_query(names, others))
    for part in out.split("&") if out else []:
        assert part.endswith("=[REDACTED]")


@bounded(500)
@given(st.lists(st.tuples(RAW_NAMES, RAW_VALUES), max_size=25))
@example([("a%0A", b"")])
def test_lg_02_logged_parameter_names_use_only_the_allowed_characters(
        pairs: list[tuple[str, bytes]]) -> None:
    out = logged_query(raw_query([n for n, _ in pairs], [v for _, v in pairs]))
    allowed = re.compile(rf"(?:[{re.escape(QUERY_NAME_CHARS)}]{{1,32}}|\[REDACTED\])=\[REDACTED\]")
    for part in out.split("&") if out else []:
        assert allowed.fullmatch(part), part
