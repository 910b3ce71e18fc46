"""Credentials for the main API: hand out a usable one, refreshing it first when it is about
to expire, with one refresh per credential across every broker process.

A refresh runs single-flight in the process (one task per credential, the other readers
await it) and under a lock in the state store across processes (owned by a random token,
released by compare-and-delete, outliving the refresh timeout). The new tokens are written
with a compare-and-swap on the credential's version before anyone gets them, so a late
writer never overwrites a newer token and a disconnect that lands meanwhile wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker import flow, store
from broker.db import iso, utcnow
from broker.errors import ApiError, Conflict, CryptoError, NotFound, Unavailable
from broker.models import Credential, Integration
from broker.runtime import Runtime
from broker.spec import ApiKeyProvider, OAuth2Provider, Provider
from broker.state import StateUnavailable

log = logging.getLogger(__name__)

MARGIN = timedelta(minutes=5)
# A hand-out is reused for at most this long. Every committed change to an integration drops
# it at once in this process and, through the state store's pub/sub, in the others; the TTL
# bounds staleness when a message is missed (Redis restarting).
CACHE_SECONDS = 1.0
CHANNEL = "invalidate"
# Answers that no retry will change: the grant is gone until a person reconnects.
PERMANENT = frozenset({"invalid_grant", "invalid_client", "unauthorized_client",
                       "access_denied", "invalid_scope"})
BACKOFF_BASE, BACKOFF_MAX = 30.0, 3600.0
READ_FLUSH_SECONDS = 5.0
Loaded = tuple[Integration, Credential | None]


class CredentialUnreadable(ApiError):
    status, code = 500, "credential_unreadable"



def usable_or_raise(integration: Integration, credential: Credential | None) -> Credential:
    """The credential, or the 409 that says why there is none to hand out."""
    if integration.status == "paused":
        raise Conflict("The integration is paused.", code="integration_paused")
    if integration.status == "disconnected" or credential is None:
        raise Conflict("The integration is disconnected.", code="integration_disconnected")
    if integration.health_status == "reauth_required":
        raise Conflict("The provider no longer accepts this grant; reconnect the "
                       "integration.", code="reauth_required")
    return credential


def needs_refresh(provider: Provider, credential: Credential, now: datetime,
                  margin: timedelta = MARGIN) -> bool:
    return (isinstance(provider, OAuth2Provider) and credential.expires_at is not None
            and credential.refresh_token_ct is not None
            and credential.expires_at - now < margin)


def backoff(failures: int) -> timedelta:
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, failures - 1))
    return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))  # jitter spreads retries


def inputs_of(provider: Provider, integration: Integration) -> dict[str, str]:
    """The non-secret inputs kept in metadata, for URL placeholders ({shop})."""
    names = {f.name for f in provider.fields if not f.secret}
    return {k: str(v) for k, v in integration.provider_metadata.items() if k in names}


async def load(session: AsyncSession, *, project_id: str | None = None,
               provider: str | None = None, integration_id: str | None = None) -> Loaded | None:
    """An integration and its credential in one query."""
    query = select(Integration, Credential).outerjoin(
        Credential, Credential.integration_id == Integration.id)
    if integration_id is not None:
        query = query.where(Integration.id == integration_id)
    else:
        query = query.where(Integration.project_id == project_id,
                            Integration.provider == provider)
    row = (await session.execute(query)).first()
    return (row[0], row[1]) if row else None


class Credentials:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self._inflight: dict[str, asyncio.Future[Loaded]] = {}
        self._reads: dict[str, tuple[str, datetime]] = {}
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any], str,
                                                 datetime | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}
        session_class = rt.sessions.kw["sync_session_class"]
        event.listen(session_class, "after_flush", self._collect)
        event.listen(session_class, "after_commit", self._committed)
        event.listen(session_class, "after_rollback", self._discard)
        self.on_message: list[Any] = []  # other subscribers of the channel (token caches)

    # -- invalidation ----------------------------------------------------------------------

    @staticmethod
    def _collect(session: Any, _context: Any) -> None:
        changed = session.info.setdefault("changed_integrations", set())
        for obj in (*session.new, *session.dirty, *session.deleted):
            if isinstance(obj, Integration):
                changed.add((obj.project_id, obj.provider))

    @staticmethod
    def _discard(session: Any) -> None:
        session.info.pop("changed_integrations", None)

    def _committed(self, session: Any) -> None:
        changed = session.info.pop("changed_integrations", set())
        if not changed:
            return
        for key in changed:
            self._cache.pop(key, None)
        message = json.dumps({"integrations": sorted(changed)})
        task = asyncio.get_running_loop().create_task(self._publish(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, message: str) -> None:
        try:
            await self.rt.state_store.publish(CHANNEL, message)
        except StateUnavailable:
            log.warning("could not publish a cache invalidation; other processes catch up "
                        "within %.0f s", CACHE_SECONDS)

    def receive(self, message: str) -> None:
        try:
            doc = json.loads(message)
        except ValueError:
            return
        for project_id, provider in doc.get("integrations", []):
            self._cache.pop((project_id, provider), None)
        for callback in self.on_message:
            callback(doc)

    # -- the hot path ----------------------------------------------------------------------

    async def handout(self, project_id: str, slug: str, reader: str) -> dict[str, Any]:
        key = (project_id, slug)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            now = utcnow()
            if hit[3] is None or hit[3] - now >= MARGIN:
                self._reads[hit[2]] = (reader, now)
                self.rt.metrics.cache.labels("cache").inc()
                return hit[1]
        self.rt.metrics.cache.labels("database").inc()
        # One load per key at a time: when an entry expires under load, the readers that
        # arrive meanwhile wait for that load instead of each querying the database.
        loading = self._loading.get(key)
        if loading is not None:
            await asyncio.wait({loading})
            return await self.handout(project_id, slug, reader)
        loading = asyncio.get_running_loop().create_future()
        self._loading[key] = loading
        try:
            return await self._load_handout(project_id, slug, reader)
        finally:
            del self._loading[key]
            loading.set_result(None)

    async def _load_handout(self, project_id: str, slug: str, reader: str) -> dict[str, Any]:
        provider = self.rt.providers.get(slug)
        if provider is None:
            raise NotFound("No provider with that name in the catalog.")
        async with self.rt.sessions() as session:
            loaded = await load(session, project_id=project_id, provider=slug)
        if loaded is None:
            raise NotFound(f"{provider.name} is not installed in this project.")
        integration, credential = loaded
        credential = usable_or_raise(integration, credential)
        now = utcnow()
        if needs_refresh(provider, credential, now):
            if credential.retry_at is None or credential.retry_at <= now:
                integration, fresh = await self.refresh(integration.id)
                credential = usable_or_raise(integration, fresh)
            elif credential.expires_at is not None and credential.expires_at <= now:
                raise Unavailable("The provider failed to refresh this token; retrying after "
                                  f"{iso(credential.retry_at)}.", code="refresh_failed")
        try:
            secrets = store.open_credential(self.rt.ring, integration, credential)
        except CryptoError as exc:
            # Never "not connected": a credential that does not open is an operator problem.
            log.error("credential does not decrypt", extra={
                "integration_id": integration.id, "key_id": credential.key_id,
                "reason": str(exc)})
            raise CredentialUnreadable("The stored credential cannot be decrypted with this "
                                       "broker's key ring.") from None
        self._reads[integration.id] = (reader, now)
        body: dict[str, Any] = {
            "provider": slug, "setup_type": provider.setup_type,
            "metadata": integration.provider_metadata,
            "allowed_actions": integration.allowed_actions,
        }
        if isinstance(provider, OAuth2Provider):
            body.update(access_token=secrets.access_token, token_type=credential.token_type
                        or "bearer", expires_at=iso(credential.expires_at),
                        scopes=credential.scopes)
        else:
            body["fields"] = dict(secrets.fields)
            secret_names = [f.name for f in provider.fields if f.secret]
            if isinstance(provider, ApiKeyProvider) and secret_names:
                body["api_key"] = secrets.fields.get(secret_names[-1])
        self._cache[(project_id, slug)] = (time.monotonic() + CACHE_SECONDS, body,
                                           integration.id, credential.expires_at)
        return body

    # -- refresh ---------------------------------------------------------------------------

    async def refresh(self, integration_id: str, margin: timedelta = MARGIN) -> Loaded:
        """Refresh once for everyone: readers in this process share one task. ``margin``:
        refresh when the token expires sooner than this (the worker looks further ahead)."""
        running = self._inflight.get(integration_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Loaded] = asyncio.get_running_loop().create_future()
        self._inflight[integration_id] = future
        try:
            result = await self._refresh_across_processes(integration_id, margin)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody warns
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[integration_id]

    async def _reload(self, integration_id: str) -> Loaded:
        async with self.rt.sessions() as session:
            loaded = await load(session, integration_id=integration_id)
        if loaded is None:
            raise NotFound("The integration no longer exists.")
        return loaded

    async def _refresh_across_processes(self, integration_id: str, margin: timedelta
                                        ) -> Loaded:
        timeout = self.rt.settings.provider_timeout
        ttl_ms = int((2 * timeout + 5) * 1000)  # outlives the provider call it guards
        deadline = time.monotonic() + ttl_ms / 1000
        name = f"refresh:{integration_id}"
        waited_since = time.monotonic()
        try:
            while (owner := await self.rt.state_store.acquire(name, ttl_ms)) is None:
                # Another process is refreshing: wait for its write, then use it.
                await asyncio.sleep(0.05)
                integration, credential = await self._reload(integration_id)
                provider = self.rt.providers[integration.provider]
                if credential is None or not needs_refresh(provider, credential, utcnow(),
                                                           margin):
                    self.rt.metrics.lock_waits.observe(time.monotonic() - waited_since)
                    return integration, credential
                if time.monotonic() > deadline:
                    raise Unavailable("Another refresh of this credential is taking too "
                                      "long.", code="refresh_busy")
            try:
                return await self._refresh_locked(integration_id, margin)
            finally:
                await self.rt.state_store.release(name, owner)
        except StateUnavailable:
            raise Unavailable("The state store is unreachable.") from None

    async def _refresh_locked(self, integration_id: str, margin: timedelta) -> Loaded:
        integration, credential = await self._reload(integration_id)
        provider = self.rt.providers[integration.provider]
        now = utcnow()
        if (credential is None or integration.status != "active"
                or integration.health_status == "reauth_required"
                or not needs_refresh(provider, credential, now, margin)):
            return integration, credential  # disconnected, paused, or a sibling refreshed
        assert isinstance(provider, OAuth2Provider)
        client = self.rt.clients.get(provider.slug)
        if client is None:
            raise Unavailable(f"No OAuth app is configured for {provider.name}.",
                              code="provider_not_configured")
        old = store.open_credential(self.rt.ring, integration, credential)
        assert old.refresh_token is not None
        started = time.monotonic()
        try:
            token = await flow.refresh(provider, client, refresh_token=old.refresh_token,
                                       inputs=inputs_of(provider, integration),
                                       timeout=self.rt.settings.provider_timeout)
        except flow.ExchangeError as exc:
            self.rt.metrics.refreshes.labels(provider.slug, "permanent" if exc.code in PERMANENT
                                             else "transient").inc()
            return await self._failed(integration_id, credential, exc.code)
        finally:
            self.rt.metrics.provider_calls.labels(provider.slug, "refresh").observe(
                time.monotonic() - started)
        self.rt.metrics.refreshes.labels(provider.slug, "success").inc()
        new_secrets = store.Secrets(access_token=token.access_token,
                                    refresh_token=token.refresh_token or old.refresh_token,
                                    fields=old.fields)
        expected = credential.version
        for _ in range(3):
            async with self.rt.sessions() as session:
                current = await load(session, integration_id=integration_id)
                if current is None or current[1] is None:
                    return await self._reload(integration_id)  # disconnected meanwhile: wins
                integration, now_stored = current
                if now_stored.version != expected:
                    # Rewritten meanwhile. A key rotation only re-wraps the envelope: the
                    # tokens are the ones just spent, so these new ones must still be kept.
                    stored = store.open_credential(self.rt.ring, integration, now_stored)
                    if stored.refresh_token != old.refresh_token:
                        return integration, now_stored  # a newer grant was written: keep it
                    expected = now_stored.version
                written = await store.swap_credential(
                    session, self.rt.ring, integration, expected_version=expected,
                    secrets=new_secrets, token_type=token.token_type,
                    scopes=list(token.scopes) or credential.scopes,
                    expires_at=flow.expires_at(provider, token, now))
                if not written:
                    await session.rollback()
                    continue
                integration.health_status, integration.error_message = "healthy", None
                integration.last_synced_at = integration.updated_at = now
                store.record_event(session, type="credential.refreshed",
                                   project_id=integration.project_id, integration=integration,
                                   actor_key_id=None, request_id=None,
                                   details={"rotated": token.refresh_token not in
                                            (None, old.refresh_token)})
                await session.commit()
                return await self._reload(integration_id)
        raise Unavailable("The credential kept changing during the refresh; try again.",
                          code="refresh_busy")

    async def _failed(self, integration_id: str, seen: Credential, code: str) -> Loaded:
        now = utcnow()
        async with self.rt.sessions() as session:
            current = await load(session, integration_id=integration_id)
            if current is None or current[1] is None:
                return await self._reload(integration_id)
            integration, credential = current
            if credential.version != seen.version:
                # The refresh token was spent by a sibling that wrote first: a lost race,
                # not a revoked grant. Use what it wrote.
                return integration, credential
            if code in PERMANENT:
                integration.health_status = "reauth_required"
                integration.error_message = (f"The provider refused the refresh token "
                                             f"({code}); reconnect the integration.")
                integration.updated_at = now
                store.record_event(session, type="integration.reauth_required",
                                   project_id=integration.project_id, integration=integration,
                                   actor_key_id=None, request_id=None,
                                   details={"reason": code})
                await session.commit()
                raise Conflict(integration.error_message, code="reauth_required")
            failures = credential.refresh_failures + 1
            retry_at = now + backoff(failures)
            await session.execute(update(Credential)
                                  .where(Credential.integration_id == integration_id)
                                  .values(refresh_failures=failures, retry_at=retry_at))
            integration.health_status = "degraded"
            integration.error_message = (f"Token refresh failed ({code}); retrying after "
                                         f"{iso(retry_at)}.")
            integration.updated_at = now
            await session.commit()
            log.warning("refresh failed", extra={"integration_id": integration_id,
                                                 "reason": code, "failures": failures})
        integration, credential = await self._reload(integration_id)
        if credential is not None and credential.expires_at and credential.expires_at > now:
            return integration, credential  # still valid for a while: hand it out
        raise Unavailable("The provider failed to refresh this token; try again later.",
                          code="refresh_failed")

    # -- read records ----------------------------------------------------------------------

    async def flush_reads(self) -> None:
        pending, self._reads = self._reads, {}
        if not pending:
            return
        async with self.rt.sessions() as session:
            for integration_id, (reader, at) in pending.items():
                await session.execute(update(Credential)
                                      .where(Credential.integration_id == integration_id)
                                      .values(last_read_at=at, last_read_by=reader))
            await session.commit()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Write read records in the background, off the hot path, and once more at exit;
        listen for other processes' invalidations."""

        async def record() -> None:
            while True:
                await asyncio.sleep(READ_FLUSH_SECONDS)
                try:
                    await self.flush_reads()
                except Exception:
                    log.exception("could not record credential reads")

        async def listen() -> None:
            async for message in self.rt.state_store.subscribe(CHANNEL):
                self.receive(message)

        tasks = [asyncio.create_task(record()), asyncio.create_task(listen())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await self.flush_reads()
            session_class = self.rt.sessions.kw["sync_session_class"]
            event.remove(session_class, "after_flush", self._collect)
            event.remove(session_class, "after_commit", self._committed)
            event.remove(session_class, "after_rollback", self._discard)


async def revoke_at_provider(rt: Runtime, integration: Integration,
                             credential: Credential | None) -> tuple[list[str], str | None]:
    """Revoke the grant at the provider where it declares how: the refresh token when there
    is one (RFC 7009: that also ends its access tokens), else the access token. Returns
    (what was revoked, why not). A failure never blocks the local wipe."""
    provider = rt.providers.get(integration.provider)
    if not isinstance(provider, OAuth2Provider) or provider.revoke_url is None:
        return [], "unsupported"
    if credential is None:
        return [], "no_credential"
    client = rt.clients.get(provider.slug)
    if client is None:
        return [], "provider_not_configured"
    try:
        secrets = store.open_credential(rt.ring, integration, credential)
    except CryptoError:
        return [], "credential_unreadable"
    hint = "refresh_token" if secrets.refresh_token else "access_token"
    token = secrets.refresh_token or secrets.access_token
    if token is None:
        return [], "no_token"
    done = await flow.revoke(rt.http, provider, client, token=token, hint=hint,
                             inputs=inputs_of(provider, integration))
    return ([hint], None) if done else ([], "provider_refused")
