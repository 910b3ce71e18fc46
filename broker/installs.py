"""Finishing an install: store the credential and mark the integration active, in one
transaction with its audit row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from broker import store
from broker.crypto import KeyRing
from broker.models import Integration
from broker.spec import OAuth2Provider, Provider


class AccountChanged(Exception):
    """The install connected another account at the provider than the one this project's
    integration holds; its credentials are kept, nothing is overwritten."""


def _account(provider: Provider, metadata: Mapping[str, Any]) -> Any:
    key = provider.account_id if isinstance(provider, OAuth2Provider) else None
    value = None if key is None else metadata.get(key)
    # Case-blind: a Shopify shop is a host name a person typed (Acme.myshopify.com is
    # acme.myshopify.com); the ids providers issue never differ only in case.
    return value.lower() if isinstance(value, str) else value


async def complete(
    session: AsyncSession, ring: KeyRing, *, project_id: str, provider: Provider,
    secrets: store.Secrets, metadata: Mapping[str, Any], token_type: str | None = None,
    scopes: Sequence[str] = (), expires_at: datetime | None = None,
    request_id: str | None = None,
) -> Integration:
    # Two first installs of one provider racing (CC-06): both find no row to lock, and the
    # loser's insert breaks the unique (project, provider). Its second pass finds the
    # winner's row, locked, and is the reinstall it now is: renewed, or refused as another
    # account, never a 500 that leaves its fresh tokens unaccounted for.
    for attempt in (1, 2):
        try:
            return await _complete(session, ring, project_id=project_id, provider=provider,
                                   secrets=secrets, metadata=metadata, token_type=token_type,
                                   scopes=scopes, expires_at=expires_at,
                                   request_id=request_id)
        except IntegrityError:
            await session.rollback()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _complete(
    session: AsyncSession, ring: KeyRing, *, project_id: str, provider: Provider,
    secrets: store.Secrets, metadata: Mapping[str, Any], token_type: str | None,
    scopes: Sequence[str], expires_at: datetime | None, request_id: str | None,
) -> Integration:
    await store.ensure_project(session, project_id)
    existing = await store.get_integration(session, project_id, provider.slug, for_update=True)
    # A reinstall may renew the same account's credentials, never swap in another account's
    # (nOAuth): the old account must be disconnected first.
    if existing is not None and await store.has_credential(session, existing.id):
        before = _account(provider, existing.provider_metadata)
        if before is not None and before != _account(provider, metadata):
            await session.rollback()
            raise AccountChanged(provider.slug)
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
    down): nothing is stored but the fact, for the project's audit trail. A person who
    refused consent cancelled the install; that is not a failure to investigate."""
    await store.ensure_project(session, project_id)
    kind = "cancelled" if reason == "access_denied" else "failed"
    store.record_event(session, type=f"integration.install_{kind}", project_id=project_id,
                       actor_key_id=None, request_id=request_id,
                       details={"provider": provider, "reason": reason})
    await session.commit()
