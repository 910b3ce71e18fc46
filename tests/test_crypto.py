"""The key ring and AES-GCM envelopes. (Checklist items KS-02, KS-03, KS-09 and KS-10 have
their own tests in tests/security/test_key_storage.py.)"""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from broker.crypto import KeyRing, RowContext, add_key, blob_key_id
from broker.errors import ConfigError, CryptoError
from tests.conftest import make_ring

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
    (json.dumps({"primary": "k1", "keys": [{"id": "k1", "disabled": True, "secret":
                                           base64.b64encode(b"x" * 32).decode()}]}),
     "primary key 'k1' is disabled"),
    (json.dumps({"primary": "k1", "keys": [
        {"id": "k1", "secret": base64.b64encode(b"x" * 32).decode()},
        {"id": "k2", "disabled": "yes", "secret": base64.b64encode(b"y" * 32).decode()}]}),
     "disabled must be true or false"),
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
