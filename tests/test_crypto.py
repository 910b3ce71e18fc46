"""The key ring and AES-GCM envelopes (checklist KS-02, KS-03, KS-10 in part)."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from broker.crypto import KeyRing, RowContext, add_key, blob_key_id
from broker.errors import ConfigError, CryptoError
from tests.conftest import make_ring, ring_json

CTX = RowContext("prj_a", "slack", "int_1")


def test_round_trip_and_key_id_in_every_blob() -> None:
    ring = make_ring("k1", "k2", primary="k2")
    sealed = ring.seal(CTX, {"access_token": b"at", "refresh_token": None, "secret": b"{}"})
    assert sealed.key_id == "k2"
    assert blob_key_id(sealed.data_key) == "k2"
    assert blob_key_id(sealed.fields["access_token"]) == "dk"  # the row's own data key
    assert sealed.fields["refresh_token"] is None
    assert ring.open(CTX, sealed.data_key, sealed.fields) == {
        "access_token": b"at", "refresh_token": None, "secret": b"{}"}


def test_each_credential_gets_its_own_data_key() -> None:
    ring = make_ring()
    one = ring.seal(CTX, {"access_token": b"same"})
    two = ring.seal(CTX, {"access_token": b"same"})
    assert one.data_key != two.data_key
    # A field sealed under one data key does not open under another's.
    with pytest.raises(CryptoError):
        ring.open(CTX, two.data_key, {"access_token": one.fields["access_token"]})


@pytest.mark.parametrize("other", [
    RowContext("prj_b", "slack", "int_1"),
    RowContext("prj_a", "discord", "int_1"),
    RowContext("prj_a", "slack", "int_2"),
    # Length prefixes: moving characters between parts changes the associated data.
    RowContext("prj_as", "lack", "int_1"),
])
def test_ciphertext_bound_to_its_row(other: RowContext) -> None:
    ring = make_ring()
    sealed = ring.seal(CTX, {"access_token": b"at"})
    with pytest.raises(CryptoError):
        ring.open(other, sealed.data_key, sealed.fields)


def test_fields_cannot_be_swapped_within_a_row() -> None:
    ring = make_ring()
    sealed = ring.seal(CTX, {"access_token": b"at", "refresh_token": b"rt"})
    swapped = {"access_token": sealed.fields["refresh_token"],
               "refresh_token": sealed.fields["access_token"]}
    with pytest.raises(CryptoError):
        ring.open(CTX, sealed.data_key, swapped)


def test_every_header_and_body_byte_is_authenticated() -> None:
    ring = make_ring()
    sealed = ring.seal(CTX, {"access_token": b"at"})
    blob = sealed.fields["access_token"]
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(CryptoError):
            ring.open(CTX, sealed.data_key, {"access_token": bytes(tampered)})
    for i in range(len(sealed.data_key)):
        tampered = bytearray(sealed.data_key)
        tampered[i] ^= 0x01
        with pytest.raises(CryptoError):
            ring.open(CTX, bytes(tampered), sealed.fields)


def test_unknown_key_id_fails_without_trying_other_keys() -> None:
    sealed = make_ring("k1").seal(CTX, {"access_token": b"at"})
    other = make_ring("k2")
    with pytest.raises(CryptoError, match="unknown key id 'k1'"):
        other.open(CTX, sealed.data_key, sealed.fields)
    # Same id, different material: authentication fails, it never decrypts to garbage.
    with pytest.raises(CryptoError, match="authentication"):
        make_ring("k1").open(CTX, sealed.data_key, sealed.fields)


def test_nonces_are_unique() -> None:
    ring = make_ring()
    nonces = set()
    for _ in range(10_000):
        blob = ring.seal(CTX, {"x": b"p"}).fields["x"]
        start = 2 + blob[1]
        nonces.add(blob[start:start + 12])
    assert len(nonces) == 10_000


def test_repr_shows_ids_only() -> None:
    material = os.urandom(32)
    ring = KeyRing.from_json(ring_json({"kA": material}, "kA"), "test")
    text = repr(ring) + repr(ring._keys)
    assert "kA" in text
    for encoding in (material.hex(), base64.b64encode(material).decode(), repr(material)):
        assert encoding not in text


@pytest.mark.parametrize(("doc", "message"), [
    ("not json", "not a key ring"),
    (json.dumps({"keys": []}), "not a key ring"),
    (json.dumps({"primary": "k9", "keys": [{"id": "k1", "secret": base64.b64encode(
        b"x" * 32).decode()}]}), "primary key 'k9'"),
    (json.dumps({"primary": "k1", "keys": [{"id": "k1", "secret": base64.b64encode(
        b"short").decode()}]}), "32 bytes"),
    (json.dumps({"primary": "k1", "keys": [{"id": "k1", "secret": "!!notbase64"}]}),
     "not a key ring"),
    (json.dumps({"primary": "k 1", "keys": [{"id": "k 1", "secret": base64.b64encode(
        b"x" * 32).decode()}]}), "must match"),
    (json.dumps({"primary": "k1", "keys": [
        {"id": "k1", "secret": base64.b64encode(b"x" * 32).decode()},
        {"id": "k1", "secret": base64.b64encode(b"y" * 32).decode()}]}), "duplicate"),
])
def test_bad_rings_are_refused_clearly(doc: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KeyRing.from_json(doc, "BROKER_KEYS")


def test_missing_ring_says_how_to_make_one(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ConfigError, match="broker keys add"):
        KeyRing.load(None, None)
    with pytest.raises(ConfigError, match="cannot read key ring"):
        KeyRing.load(tmp_path / "absent.json", None)  # type: ignore[operator]


def test_add_key_creates_a_private_ring_then_adds_decrypt_only(tmp_path: object) -> None:
    path = tmp_path / "ring" / "keys.json"  # type: ignore[operator]
    first, primary = add_key(path)
    assert primary and stat.S_IMODE(path.stat().st_mode) == 0o600
    second, primary2 = add_key(path)
    assert not primary2 and second != first
    ring = KeyRing.load(path, None)
    assert ring.primary_id == first and set(ring.ids) == {first, second}
    # Data written under the old primary still opens once the ring has more keys.
    sealed = ring.seal(CTX, {"a": b"1"})
    assert KeyRing.load(path, None).open(CTX, sealed.data_key, sealed.fields)["a"] == b"1"


def test_rewrap_moves_the_data_key_to_the_primary_and_keeps_the_fields() -> None:
    old = make_ring("k1")
    sealed = old.seal(CTX, {"access_token": b"at", "refresh_token": b"rt"})
    both = KeyRing([*old._keys.values(), *make_ring("k2")._keys.values()], "k2")
    rewrapped = both.rewrap(CTX, sealed.data_key)
    assert blob_key_id(rewrapped) == "k2"
    assert both.open(CTX, rewrapped, sealed.fields) == {"access_token": b"at",
                                                        "refresh_token": b"rt"}
    # Bound to the row still, and the new ring alone (old key retired) opens it.
    with pytest.raises(CryptoError):
        both.rewrap(RowContext("prj_b", "slack", "int_1"), sealed.data_key)
    only_new = KeyRing([both._keys["k2"]], "k2")
    assert only_new.open(CTX, rewrapped, sealed.fields)["access_token"] == b"at"
    with pytest.raises(CryptoError, match="unknown key id 'k1'"):
        only_new.open(CTX, sealed.data_key, sealed.fields)
