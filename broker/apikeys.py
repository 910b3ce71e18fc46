"""API keys and service tokens: generation, parsing and hashing.

A key is ``riq_`` + a 12-character public id + a 32-character secret (about 190 bits from
``secrets``) + a 6-character CRC-32 checksum, all base62. The prefix and checksum let secret
scanners recognise a leaked key and let the broker reject a mistyped one without a lookup.
Only the SHA-256 of the whole key is stored (a high-entropy secret needs no slow hash); the
public id is the row id that audit records name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_LEN, SECRET_LEN, CHECK_LEN = 12, 32, 6
SCOPES = ("read", "integrations:write")
API_KEY_PREFIX = "riq_"
API_KEY_ID_PREFIX = "ak_"
SERVICE_TOKEN_PREFIX = "rst_"
SERVICE_TOKEN_ID_PREFIX = "st_"


def _random(n: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(n))


def _checksum(body: str) -> str:
    value, out = zlib.crc32(body.encode()), []
    for _ in range(CHECK_LEN):
        value, rem = divmod(value, 62)
        out.append(ALPHABET[rem])
    return "".join(reversed(out))


def generate(prefix: str) -> tuple[str, str]:
    """A new (row id, full secret) pair; the secret is shown once and never stored."""
    public, secret = _random(ID_LEN), _random(SECRET_LEN)
    body = public + secret
    return public, f"{prefix}{body}{_checksum(body)}"


def parse(prefix: str, presented: str) -> str | None:
    """The row id of a well-formed token, or None; checks shape and checksum only."""
    if not presented.startswith(prefix):
        return None
    rest = presented[len(prefix):]
    if len(rest) != ID_LEN + SECRET_LEN + CHECK_LEN or any(c not in ALPHABET for c in rest):
        return None
    body, check = rest[:-CHECK_LEN], rest[-CHECK_LEN:]
    if not hmac.compare_digest(_checksum(body), check):
        return None
    return body[:ID_LEN]


def digest(presented: str) -> bytes:
    return hashlib.sha256(presented.encode()).digest()


def matches(presented: str, stored_digest: bytes) -> bool:
    return hmac.compare_digest(digest(presented), stored_digest)
