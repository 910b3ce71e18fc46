"""Key-ring fingerprints: notice a ring key whose material changed under an id in use.

The first process to meet a key id stores HMAC-SHA256(key, "kid-check") for it; every later
start compares its ring with what is stored. A changed key would otherwise surface as every
credential failing to decrypt, one read at a time, or worse, as new data keys wrapped under
material the rest of the fleet cannot open (checklist KS-10). Only fingerprints are stored;
the key material never reaches the database.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.crypto import KeyRing
from broker.db import utcnow
from broker.models import KeyFingerprint

log = logging.getLogger(__name__)
# Start-up must not hang on a black-holed database; readiness asks again later.
CHECK_TIMEOUT = 5.0


async def verify(engine: AsyncEngine, ring: KeyRing) -> list[str]:
    """Record the fingerprints of key ids seen for the first time; return the ids whose
    stored fingerprint differs from this ring's key."""
    mine = ring.fingerprints()
    table = KeyFingerprint.__table__
    for _ in range(3):
        async with engine.connect() as conn:
            rows = await conn.execute(select(table.c.key_id, table.c.fingerprint)
                                      .where(table.c.key_id.in_(sorted(mine))))
            stored = {kid: bytes(fp) for kid, fp in rows}
            new = sorted(mine.keys() - stored.keys())
            if new:
                try:
                    await conn.execute(insert(table), [
                        {"key_id": kid, "fingerprint": mine[kid], "created_at": utcnow()}
                        for kid in new])
                    await conn.commit()
                except IntegrityError:
                    # Another process recorded one first: compare with what it stored.
                    await conn.rollback()
                    continue
        return sorted(kid for kid, fp in stored.items()
                      if not hmac.compare_digest(fp, mine[kid]))
    raise RuntimeError("key fingerprints kept changing while being recorded")


async def check(engine: AsyncEngine, ring: KeyRing) -> list[str] | None:
    """``verify``, logging the outcome; None when the database could not be asked (the
    readiness probe asks again)."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            mismatched = await verify(engine, ring)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("could not check the key ring's fingerprints (%s)", type(exc).__name__)
        return None
    if mismatched:
        # Ids only: neither the key nor its fingerprint belongs in a log.
        log.error("key ring: %s", describe(mismatched), extra={"key_ids": mismatched})
    return mismatched


def describe(mismatched: list[str]) -> str:
    return (f"key {', '.join(mismatched)} in this ring is not the key stored credentials "
            "were written with (fingerprint mismatch); deploy the right key ring")
