"""The background worker: refresh tokens ahead of expiry and run each provider's health
check, one runner at a time across every broker instance (a lock in the state store)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from sqlalchemy import or_, select, update

from broker import checks, store
from broker.credentials import Credentials, inputs_of
from broker.db import utcnow
from broker.errors import ApiError, CryptoError
from broker.models import Credential, Integration
from broker.runtime import Runtime
from broker.state import StateUnavailable

log = logging.getLogger(__name__)

AHEAD = timedelta(minutes=10)  # refresh this long before expiry, ahead of the hot path
HEALTH_EVERY = timedelta(minutes=15)
BATCH = 100


def _eligible() -> list[object]:
    return [Integration.status == "active",
            or_(Integration.health_status.is_(None),
                Integration.health_status != "reauth_required")]


async def refresh_due(rt: Runtime, credentials: Credentials) -> int:
    now = utcnow()
    async with rt.sessions() as session:
        due = list(await session.scalars(
            select(Integration.id).join(Credential, Credential.integration_id == Integration.id)
            .where(*_eligible(), Credential.refresh_token_ct.is_not(None),
                   Credential.expires_at < now + AHEAD,
                   or_(Credential.retry_at.is_(None), Credential.retry_at <= now))
            .limit(BATCH)))
    done = 0
    for integration_id in due:
        try:
            await credentials.refresh(integration_id, margin=AHEAD)
            done += 1
        except ApiError as exc:  # recorded on the integration by the refresh itself
            log.info("proactive refresh failed", extra={"integration_id": integration_id,
                                                        "reason": exc.code})
    return done


async def check_one(rt: Runtime, integration: Integration, credential: Credential) -> str:
    """Run the provider's health check with the stored credential; record the outcome."""
    provider = rt.providers.get(integration.provider)
    now = utcnow()
    health, error = "healthy", None
    if provider is not None and provider.health_check is not None:
        try:
            secrets = store.open_credential(rt.ring, integration, credential)
            values = {**inputs_of(provider, integration), **secrets.fields,
                      "access_token": secrets.access_token or ""}
            await checks.run(rt.http, provider, provider.health_check, values)
        except checks.Rejected as exc:
            health, error = "degraded", f"The provider refused the credential: {exc}"
        except checks.NotVerified as exc:
            health, error = "degraded", str(exc)
        except CryptoError:
            health, error = "degraded", "The stored credential cannot be decrypted."
    async with rt.sessions() as session:
        # Only if nothing changed meanwhile: a pause, a disconnect or a refresh that marked
        # the integration is newer news than this check.
        await session.execute(
            update(Integration)
            .where(Integration.id == integration.id, Integration.status == "active",
                   Integration.updated_at == integration.updated_at)
            .values(health_status=health, error_message=error, last_synced_at=now))
        await session.commit()
    return health


async def check_due(rt: Runtime) -> int:
    cutoff = utcnow() - HEALTH_EVERY
    async with rt.sessions() as session:
        rows = (await session.execute(
            select(Integration, Credential)
            .join(Credential, Credential.integration_id == Integration.id)
            .where(*_eligible(), or_(Integration.last_synced_at.is_(None),
                                     Integration.last_synced_at < cutoff))
            .limit(BATCH))).all()
    for integration, credential in rows:
        await check_one(rt, integration, credential)
    return len(rows)


async def sweep(rt: Runtime, credentials: Credentials) -> tuple[int, int]:
    return await refresh_due(rt, credentials), await check_due(rt)


async def _keep(rt: Runtime, owner: str, ttl_ms: int, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            if not await rt.state_store.extend("worker", owner, ttl_ms):
                log.warning("worker lock lost during a sweep")
                return
        except StateUnavailable:
            log.warning("worker: state store unreachable; cannot extend the lock")


async def run(rt: Runtime, credentials: Credentials, stop: asyncio.Event,
              interval: float = 30.0) -> None:
    """Sweep every ``interval`` seconds while holding the worker lock; other instances
    wait their turn, so one runner works at a time."""
    ttl_ms = int(interval * 2000)
    while not stop.is_set():
        try:
            owner = await rt.state_store.acquire("worker", ttl_ms)
            if owner is not None:
                # A sweep may outlast the lock's lifetime (many slow providers): keep the
                # lock alive while it runs, so no other instance starts a second sweep.
                keepalive = asyncio.create_task(_keep(rt, owner, ttl_ms, interval))
                try:
                    refreshed, checked = await sweep(rt, credentials)
                    if refreshed or checked:
                        log.info("worker sweep", extra={"refreshed": refreshed,
                                                        "checked": checked})
                finally:
                    keepalive.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await keepalive
                    await rt.state_store.release("worker", owner)
        except StateUnavailable:
            log.warning("worker: state store unreachable; skipping this sweep")
        except Exception:
            log.exception("worker sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
