"""Encryption at rest: a key ring of AES-256 key-encryption keys and AES-GCM envelopes.

Every credential gets its own random 256-bit data key. The data key is wrapped by the ring's
primary key; each secret field is sealed with the data key. Every blob starts with a format
version and the id of the ring key it depends on, and is authenticated together with a
canonical, length-prefixed encoding of (version, key id, project, provider, integration id,
field), so a blob copied onto another row or into another field does not decrypt. The key id
picks the key: there is no trial decryption over the ring.

A ring key may be disabled: it stays in the ring, so enabling it again restores every read,
but nothing decrypts with it meanwhile (Vault's ``min_decryption_version``, Tink's
``disable-key``). Each key has a fingerprint, HMAC-SHA256(key, "kid-check"), by which a
process can tell that the material under a known id has changed without revealing the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.errors import ConfigError, CryptoError

FORMAT_VERSION = 1
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NONCE_BYTES = 12
DATA_KEY_FIELD = "data_key"
# Field blobs are sealed by the row's own data key, which their header names with this id;
# rotating a ring key then re-wraps one data key per row and leaves the payloads alone.
ROW_KEY_ID = "dk"


FINGERPRINT_MESSAGE = b"kid-check"


@dataclass(frozen=True)
class Key:
    id: str
    material: bytes = field(repr=False)
    disabled: bool = False

    def __post_init__(self) -> None:
        if not KEY_ID_PATTERN.match(self.id):
            raise ConfigError(f"key id {self.id!r} must match {KEY_ID_PATTERN.pattern}")
        if len(self.material) != 32:
            raise ConfigError(f"key {self.id} must be 32 bytes (AES-256), not {len(self.material)}")

    @property
    def fingerprint(self) -> bytes:
        return hmac.new(self.material, FINGERPRINT_MESSAGE, hashlib.sha256).digest()


@dataclass(frozen=True)
class RowContext:
    """What a ciphertext is bound to: the row it lives on."""

    project_id: str
    provider: str
    integration_id: str


def _aad(key_id: str, ctx: RowContext, field_name: str) -> bytes:
    parts = (str(FORMAT_VERSION), key_id, ctx.project_id, ctx.provider, ctx.integration_id,
             field_name)
    out = bytearray()
    for part in parts:
        raw = part.encode()
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def _header(key_id: str) -> bytes:
    kid = key_id.encode()
    return bytes([FORMAT_VERSION, len(kid)]) + kid


def blob_key_id(blob: bytes) -> str:
    """The ring key id a blob names in its header."""
    if len(blob) < 2 or blob[0] != FORMAT_VERSION:
        raise CryptoError("unknown ciphertext format")
    n = blob[1]
    if len(blob) < 2 + n + NONCE_BYTES + 16:
        raise CryptoError("truncated ciphertext")
    return blob[2 : 2 + n].decode("ascii", errors="replace")


def _seal(aead: AESGCM, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return _header(key_id) + nonce + aead.encrypt(nonce, plaintext, aad)


def _open(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    start = 2 + blob[1]
    nonce, body = blob[start : start + NONCE_BYTES], blob[start + NONCE_BYTES :]
    try:
        return aead.decrypt(nonce, body, aad)
    except InvalidTag:
        raise CryptoError("ciphertext failed authentication") from None


class KeyRing:
    """Ring keys by id, one of them primary (used for new writes); the rest decrypt only."""

    def __init__(self, keys: Iterable[Key], primary_id: str):
        self._keys = {k.id: k for k in keys}
        if primary_id not in self._keys:
            raise ConfigError(f"primary key {primary_id!r} is not in the key ring")
        if self._keys[primary_id].disabled:
            raise ConfigError(f"primary key {primary_id!r} is disabled; enable it or promote "
                              "another key")
        self.primary_id = primary_id
        # A disabled key gets no cipher at all: no code path can decrypt with it.
        self._aeads = {k.id: AESGCM(k.material) for k in self._keys.values() if not k.disabled}

    def __repr__(self) -> str:
        return (f"KeyRing(primary={self.primary_id!r}, ids={sorted(self._keys)!r}, "
                f"disabled={self.disabled_ids!r})")

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    @property
    def disabled_ids(self) -> list[str]:
        return sorted(k.id for k in self._keys.values() if k.disabled)

    def fingerprints(self) -> dict[str, bytes]:
        return {k.id: k.fingerprint for k in self._keys.values()}

    def _aead(self, key_id: str) -> AESGCM:
        try:
            return self._aeads[key_id]
        except KeyError:
            if key_id in self._keys:
                raise CryptoError(f"key id {key_id!r} is disabled in the key ring; "
                                  f"`broker keys enable {key_id}` restores its reads") from None
            raise CryptoError(f"unknown key id {key_id!r}") from None

    # -- envelopes -------------------------------------------------------------------------

    def seal(self, ctx: RowContext, fields: Mapping[str, bytes | None]) -> Sealed:
        """Encrypt ``fields`` under a fresh data key wrapped by the primary key."""
        kid = self.primary_id
        data_key = AESGCM.generate_key(bit_length=256)
        wrapped = _seal(self._aead(kid), kid, data_key, _aad(kid, ctx, DATA_KEY_FIELD))
        dek = AESGCM(data_key)
        blobs = {
            name: None if value is None else _seal(dek, ROW_KEY_ID, value,
                                                   _aad(ROW_KEY_ID, ctx, name))
            for name, value in fields.items()
        }
        return Sealed(key_id=kid, data_key=wrapped, fields=blobs)

    def rewrap(self, ctx: RowContext, data_key_blob: bytes) -> bytes:
        """The same data key, wrapped by the primary key instead: the fields' ciphertexts
        stay valid, so a rotation rewrites one short blob per row."""
        kid = blob_key_id(data_key_blob)
        data_key = _open(self._aead(kid), data_key_blob, _aad(kid, ctx, DATA_KEY_FIELD))
        primary = self.primary_id
        return _seal(self._aead(primary), primary, data_key,
                     _aad(primary, ctx, DATA_KEY_FIELD))

    def open(self, ctx: RowContext, data_key_blob: bytes,
             fields: Mapping[str, bytes | None]) -> dict[str, bytes | None]:
        kid = blob_key_id(data_key_blob)
        data_key = _open(self._aead(kid), data_key_blob, _aad(kid, ctx, DATA_KEY_FIELD))
        dek = AESGCM(data_key)
        out: dict[str, bytes | None] = {}
        for name, blob in fields.items():
            if blob is None:
                out[name] = None
                continue
            if blob_key_id(blob) != ROW_KEY_ID:
                raise CryptoError("field blob is not sealed by the row's data key")
            out[name] = _open(dek, blob, _aad(ROW_KEY_ID, ctx, name))
        return out

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str, source: str,
                  env_secrets: Mapping[str, str] | None = None) -> KeyRing:
        """Parse a ring. A key may hold its material inline (``"secret"``) or name the
        environment variable that does (``"secret_env": "BROKER_KEY_K2"``), so a container
        can take each key from its own secret."""
        env_secrets = env_secrets or {}
        try:
            doc = json.loads(text)
            primary = doc["primary"]
            keys = []
            for k in doc["keys"]:
                if "secret_env" in k and "secret" not in k:
                    if k["secret_env"] not in env_secrets:
                        raise ConfigError(f"key {k['id']} takes its secret from "
                                          f"{k['secret_env']}, which is not set")
                    material = env_secrets[k["secret_env"]]
                else:
                    material = k["secret"]
                disabled = k.get("disabled", False)
                if not isinstance(disabled, bool):
                    raise ConfigError(f"key {k['id']}: disabled must be true or false")
                keys.append(Key(k["id"], base64.b64decode(material, validate=True), disabled))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{source} is not a key ring: expected JSON "
                '{"primary": ID, "keys": [{"id": ID, "secret": BASE64}]} '
                f"({type(exc).__name__})"
            ) from None
        if len({k.id for k in keys}) != len(keys):
            raise ConfigError(f"{source}: duplicate key id")
        return cls(keys, primary)

    @classmethod
    def load(cls, keys_file: Path | None, keys_json: str | None,
             env_secrets: Mapping[str, str] | None = None) -> KeyRing:
        if keys_json:
            return cls.from_json(keys_json, "BROKER_KEYS", env_secrets)
        if keys_file is None:
            raise ConfigError(
                "no key ring: set BROKER_KEYS_FILE (create one with `broker keys add "
                "--file PATH`) or BROKER_KEYS"
            )
        try:
            text = keys_file.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read key ring {keys_file}: {exc.strerror}") from None
        return cls.from_json(text, str(keys_file), env_secrets)


@dataclass(frozen=True)
class Sealed:
    key_id: str
    data_key: bytes
    fields: dict[str, bytes | None]


def new_key_id() -> str:
    return f"k{datetime.now(UTC):%Y%m%d}{secrets.token_hex(3)}"


def add_key(path: Path) -> tuple[str, bool]:
    """Add a fresh key to the ring file at ``path``, creating the file (with that key as
    primary) when it does not exist. Returns (key id, became primary)."""
    material = base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
    kid = new_key_id()
    if path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read key ring {path}: {exc.strerror}") from None
        KeyRing.from_json(text, str(path))  # refuse to extend a broken ring
        doc = json.loads(text)
        doc["keys"].append({"id": kid, "secret": material,
                            "created_at": datetime.now(UTC).isoformat()})
        primary = False
    else:
        doc = {"primary": kid, "keys": [{"id": kid, "secret": material,
                                         "created_at": datetime.now(UTC).isoformat()}]}
        primary = True
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_ring(path, doc)
    return kid, primary


def _write_ring(path: Path, doc: dict[str, Any]) -> None:
    # The ring holds key material: owner-only from the first byte, then an atomic rename.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def _read_ring(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read key ring {path}: {exc.strerror}") from None
    KeyRing.from_json(text, str(path))
    doc: dict[str, Any] = json.loads(text)
    return doc


def _entry(doc: dict[str, Any], path: Path, key_id: str) -> dict[str, Any]:
    for entry in doc["keys"]:
        if entry["id"] == key_id:
            return entry
    raise ConfigError(f"key {key_id} is not in {path}")


def promote_key(path: Path, key_id: str) -> None:
    """Make ``key_id`` the primary: new writes use it; the old primary stays for reads."""
    doc = _read_ring(path)
    if _entry(doc, path, key_id).get("disabled"):
        raise ConfigError(f"key {key_id} is disabled; `broker keys enable {key_id}` first")
    doc["primary"] = key_id
    _write_ring(path, doc)


def set_disabled(path: Path, key_id: str, disabled: bool) -> None:
    """Turn decryption with ``key_id`` off or back on. The primary is never disabled: it
    encrypts every new write. (Whether rows still use the key is the caller's check.)"""
    doc = _read_ring(path)
    entry = _entry(doc, path, key_id)
    if disabled and doc["primary"] == key_id:
        raise ConfigError(f"key {key_id} is the primary; promote another key first")
    if disabled:
        entry["disabled"] = True
    else:
        entry.pop("disabled", None)
    _write_ring(path, doc)


def remove_key(path: Path, key_id: str) -> None:
    doc = _read_ring(path)
    if doc["primary"] == key_id:
        raise ConfigError(f"key {key_id} is the primary; promote another key first")
    keys = [k for k in doc["keys"] if k["id"] != key_id]
    if len(keys) == len(doc["keys"]):
        raise ConfigError(f"key {key_id} is not in {path}")
    doc["keys"] = keys
    _write_ring(path, doc)
