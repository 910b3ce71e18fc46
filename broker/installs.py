"""Finishing an install: store the credential and mark the integration active, in one
transaction with its audit row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker import store
from broker.crypto import KeyRing
from broker.models import Integration
from broker.spec import Provider


async def complete(
    session: AsyncSession, ring: KeyRing, *, project_id: str, provider: Provider,
    secrets: store.Secrets, metadata: Mapping[str, Any], token_type: str | None = None,
    scopes: Sequence[str] = (), expires_at: datetime | None = None,
    request_id: str | None = None,
) -> Integration:
    await store.ensure_project(session, project_id)
    existing = await store.get_integration(session, project_id, provider.slug)
    integration = await store.upsert_integration(
        session, project_id=project_id, provider=provider.slug,
        setup_type=provider.setup_type, metadata=metadata)
    await store.write_credential(session, ring, integration, secrets, token_type=token_type,
                                 scopes=scopes, expires_at=expires_at)
    store.record_event(session, type="integration.installed", project_id=project_id,
                       integration=integration, actor_key_id=None, request_id=request_id,
                       details={"reinstall": existing is not None, "scopes": list(scopes)})
    await session.commit()
    return integration


async def record_failure(session: AsyncSession, *, project_id: str, provider: str,
                         reason: str, request_id: str | None) -> None:
    """An install that ended without a credential (refused consent, bad code, provider
    down): nothing is stored but the fact, for the project's audit trail."""
    await store.ensure_project(session, project_id)
    store.record_event(session, type="integration.install_failed", project_id=project_id,
                       actor_key_id=None, request_id=request_id,
                       details={"provider": provider, "reason": reason})
    await session.commit()
