"""Queries and writes. The only module that encrypts or decrypts credential material.

Functions take an explicit ``AsyncSession``; callers own the transaction, so a change and its
audit row commit together.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker import apikeys
from broker.crypto import KeyRing, RowContext
from broker.db import utcnow
from broker.models import ApiKey, AuditEvent, Credential, Integration, Project, ServiceToken

PROJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(frozen=True, kw_only=True)
class Secrets:
    """Plaintext credential material, alive only between ``store`` and its caller.

    ``fields`` holds secret form inputs (an API key, a password, a webhook URL).
    """

    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)


def row_context(integration: Integration) -> RowContext:
    return RowContext(integration.project_id, integration.provider, integration.id)


# -- projects ------------------------------------------------------------------------------

async def ensure_project(session: AsyncSession, project_id: str) -> Project:
    project = await session.get(Project, project_id)
    if project is None:
        project = Project(id=project_id, name=project_id, created_at=utcnow())
        session.add(project)
        await session.flush()
    return project


async def create_api_key(
    session: AsyncSession, project_id: str, scopes: Sequence[str], label: str | None = None
) -> tuple[str, str]:
    """Create a project API key (and the project when missing); returns (id, secret). The
    secret is never stored or shown again. Commits."""
    await ensure_project(session, project_id)
    public, secret = apikeys.generate(apikeys.API_KEY_PREFIX)
    key_id = f"{apikeys.API_KEY_ID_PREFIX}{public}"
    session.add(ApiKey(id=key_id, project_id=project_id, key_hash=apikeys.digest(secret),
                       scopes=list(scopes), label=label, created_at=utcnow()))
    record_event(session, type="api_key.created", project_id=project_id, actor_key_id=None,
                 request_id=None, details={"api_key_id": key_id, "scopes": list(scopes)})
    await session.commit()
    return key_id, secret


async def create_service_token(session: AsyncSession, name: str) -> tuple[str, str]:
    """Create a service token for the internal API; returns (id, secret). Only the hash is
    kept. Commits."""
    public, secret = apikeys.generate(apikeys.SERVICE_TOKEN_PREFIX)
    token_id = f"{apikeys.SERVICE_TOKEN_ID_PREFIX}{public}"
    session.add(ServiceToken(id=token_id, name=name, created_at=utcnow(),
                             token_hash=apikeys.digest(secret)))
    await session.commit()
    return token_id, secret


# -- integrations --------------------------------------------------------------------------

async def list_integrations(session: AsyncSession, project_id: str) -> Sequence[Integration]:
    rows = await session.scalars(
        select(Integration).where(Integration.project_id == project_id)
        .order_by(Integration.created_at, Integration.id)
    )
    return rows.all()


async def get_integration(
    session: AsyncSession, project_id: str, provider: str, *, for_update: bool = False
) -> Integration | None:
    query = select(Integration).where(
        Integration.project_id == project_id, Integration.provider == provider
    )
    if for_update:
        query = query.with_for_update()
    return (await session.scalars(query)).one_or_none()


async def upsert_integration(
    session: AsyncSession, *, project_id: str, provider: str, setup_type: str,
    metadata: Mapping[str, Any] | None = None,
) -> Integration:
    """The project's integration for ``provider``, created or re-activated as active and
    healthy (an install). Settings, display name and actions survive a reinstall."""
    now = utcnow()
    integration = await get_integration(session, project_id, provider, for_update=True)
    if integration is None:
        integration = Integration(
            id=new_id("int"), project_id=project_id, provider=provider,
            setup_type=setup_type, settings={}, allowed_actions=[], created_at=now)
        session.add(integration)
    integration.status = "active"
    integration.health_status = "healthy"
    integration.sidebar_enabled = True
    integration.error_message = None
    integration.provider_metadata = dict(metadata or {})
    integration.last_synced_at = now
    integration.updated_at = now
    await session.flush()
    return integration


async def has_credential(session: AsyncSession, integration_id: str) -> bool:
    found = await session.scalar(
        select(Credential.integration_id).where(Credential.integration_id == integration_id)
    )
    return found is not None


# -- credentials ---------------------------------------------------------------------------

async def write_credential(
    session: AsyncSession,
    ring: KeyRing,
    integration: Integration,
    secrets_: Secrets,
    *,
    token_type: str | None = None,
    scopes: Sequence[str] = (),
    expires_at: datetime | None = None,
) -> Credential:
    """Seal and store ``secrets_`` as the integration's credential, replacing any old one."""
    sealed = ring.seal(row_context(integration), {
        "access_token": _enc(secrets_.access_token),
        "refresh_token": _enc(secrets_.refresh_token),
        "secret": json.dumps(dict(secrets_.fields)).encode() if secrets_.fields else None,
    })
    now = utcnow()
    cred = await session.get(Credential, integration.id, with_for_update=True)
    if cred is None:
        cred = Credential(integration_id=integration.id, version=0, created_at=now)
        session.add(cred)
    cred.key_id = sealed.key_id
    cred.data_key_ct = sealed.data_key
    cred.access_token_ct = sealed.fields["access_token"]
    cred.refresh_token_ct = sealed.fields["refresh_token"]
    cred.secret_ct = sealed.fields["secret"]
    cred.token_type = token_type
    cred.scopes = list(scopes)
    cred.expires_at = expires_at
    cred.version += 1
    cred.updated_at = now
    await session.flush()
    return cred


async def swap_credential(
    session: AsyncSession, ring: KeyRing, integration: Integration, *, expected_version: int,
    secrets: Secrets, token_type: str | None, scopes: Sequence[str],
    expires_at: datetime | None,
) -> bool:
    """Replace the credential only if it is still at ``expected_version`` (and still
    exists): a compare-and-swap, so a late or concurrent writer never wins over a newer
    token or a disconnect. Returns whether it wrote."""
    sealed = ring.seal(row_context(integration), {
        "access_token": _enc(secrets.access_token),
        "refresh_token": _enc(secrets.refresh_token),
        "secret": json.dumps(dict(secrets.fields)).encode() if secrets.fields else None,
    })
    now = utcnow()
    result = await session.execute(
        update(Credential)
        .where(Credential.integration_id == integration.id,
               Credential.version == expected_version)
        .values(key_id=sealed.key_id, data_key_ct=sealed.data_key,
                access_token_ct=sealed.fields["access_token"],
                refresh_token_ct=sealed.fields["refresh_token"],
                secret_ct=sealed.fields["secret"], token_type=token_type,
                scopes=list(scopes), expires_at=expires_at, version=expected_version + 1,
                refresh_failures=0, retry_at=None, refreshed_at=now, updated_at=now))
    return bool(getattr(result, "rowcount", 0))


def open_credential(ring: KeyRing, integration: Integration, cred: Credential) -> Secrets:
    """Decrypt a credential row; raises ``CryptoError`` if it was moved, altered or its key
    is missing (never reported as "no credential")."""
    plain = ring.open(row_context(integration), cred.data_key_ct, {
        "access_token": cred.access_token_ct,
        "refresh_token": cred.refresh_token_ct,
        "secret": cred.secret_ct,
    })
    secret = plain["secret"]
    return Secrets(
        access_token=_dec(plain["access_token"]),
        refresh_token=_dec(plain["refresh_token"]),
        fields=json.loads(secret) if secret else {},
    )


async def destroy_credential(session: AsyncSession, integration_id: str) -> bool:
    result = await session.execute(
        delete(Credential).where(Credential.integration_id == integration_id)
    )
    return bool(getattr(result, "rowcount", 0))


async def key_ids_in_use(session: AsyncSession) -> set[str]:
    return set(await session.scalars(select(Credential.key_id).distinct()))


def _enc(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def _dec(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


# -- audit ---------------------------------------------------------------------------------

def record_event(
    session: AsyncSession,
    *,
    type: str,
    project_id: str,
    integration: Integration | None = None,
    actor_key_id: str | None,
    request_id: str | None,
    details: Mapping[str, Any],
) -> AuditEvent:
    """Add an audit row to the caller's transaction: it commits with the change or not at
    all. ``details`` must hold no secret."""
    event = AuditEvent(
        project_id=project_id,
        type=type,
        integration_id=integration.id if integration else None,
        provider=integration.provider if integration else None,
        actor_key_id=actor_key_id,
        request_id=request_id,
        details=dict(details),
        created_at=utcnow(),
    )
    session.add(event)
    return event
