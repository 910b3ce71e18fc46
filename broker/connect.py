"""Connect sessions: the single-use links that start an install in a browser.

Only the SHA-256 of a session token is stored; the token itself travels once, in the URL.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db import utcnow
from broker.models import ConnectSession

SESSION_TTL = timedelta(minutes=10)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_session(
    session: AsyncSession, *, project_id: str, provider: str,
    return_url: str | None = None, params: dict[str, Any] | None = None,
) -> tuple[str, datetime]:
    token = secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now + SESSION_TTL
    session.add(ConnectSession(
        token_hash=token_hash(token), project_id=project_id, provider=provider,
        return_url=return_url, params=params or {}, created_at=now, expires_at=expires_at,
    ))
    await session.flush()
    return token, expires_at


async def consume_session(session: AsyncSession, token: str) -> ConnectSession | None:
    """Use a connect session once: a single conditional UPDATE, so two requests racing with
    the same link cannot both win. Returns the session, or None when it is unknown, used or
    expired."""
    now = utcnow()
    digest = token_hash(token)
    result = await session.execute(
        update(ConnectSession)
        .where(ConnectSession.token_hash == digest, ConnectSession.consumed_at.is_(None),
               ConnectSession.expires_at > now)
        .values(consumed_at=now))
    if not getattr(result, "rowcount", 0):
        await session.rollback()
        return None
    await session.commit()
    return await session.get(ConnectSession, digest)
