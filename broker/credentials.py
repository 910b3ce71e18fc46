"""Credentials for the main API: hand out a usable one, refreshing it first when it is about
to expire, with one refresh per credential across every broker process.

A refresh runs single-flight in the process (one task per credential, the other readers
await it) and under a lock in the state store across processes (owned by a random token,
released by compare-and-delete, outliving the refresh deadline). The new tokens are written
with a compare-and-swap on the credential's version before anyone gets them, so a late
writer never overwrites a newer token and a disconnect that lands meanwhile wins. A write
that fails is retried within the lock's lease; tokens that cannot be stored at all leave the
integration needing a reconnect rather than spend the old refresh token again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import event, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from broker import flow, store
from broker.db import iso, utcnow
from broker.errors import ApiError, ConfigError, Conflict, CryptoError, NotFound, Unavailable
from broker.models import Credential, Integration
from broker.runtime import Runtime
from broker.settings import Settings
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
# A refresh lock dies this long after its last renewal, even if its holder did; the holder
# renews it just before calling the provider, so it must outlast refresh_deadline().
LOCK_TTL = 30.0
# Once the provider has answered, how long the write of its tokens is retried: a rotating
# provider has already spent the old refresh token, so giving up early loses the grant.
PERSIST_SECONDS, PERSIST_BACKOFF = 5.0, 0.1
Loaded = tuple[Integration, Credential | None]


class CredentialUnreadable(ApiError):
    status, code = 500, "credential_unreadable"


class ProviderTimeout(ApiError):
    status, code = 504, "provider_timeout"


def refresh_deadline(settings: Settings) -> float:
    """Seconds a refresh needs once its lease is renewed: the provider call (bounded as a
    whole by ``provider_timeout``) and the retried write of what the provider returned."""
    return settings.provider_timeout + PERSIST_SECONDS


def check_timeouts(settings: Settings) -> None:
    """Refuse settings under which a refresh could outlive its lock: another process would
    then take the lock and spend the same refresh token."""
    if not 0 < settings.provider_timeout:
        raise ConfigError("provider_timeout must be positive")
    if refresh_deadline(settings) >= LOCK_TTL:
        raise ConfigError(
            f"provider_timeout ({settings.provider_timeout:g} s) plus {PERSIST_SECONDS:g} s "
            f"to store the refreshed tokens must stay under the refresh lock's "
            f"{LOCK_TTL:g} s lifetime")



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
        check_timeouts(rt.settings)
        self.rt = rt
        # Credential versions whose refresh token the provider rotated away while the new one
        # could not be stored, nor the integration flagged: never presented again from here.
        self._spent: dict[str, int] = {}
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
        ttl_ms = int(LOCK_TTL * 1000)
        deadline = time.monotonic() + LOCK_TTL
        name = f"refresh:{integration_id}"
        waited_since = time.monotonic()
        try:
            while (owner := await self.rt.state_store.acquire(name, ttl_ms)) is None:
                # Another process is refreshing: wait for its write, then use it. The last
                # re-read comes before giving up, so a write that just landed is used.
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

            async def renew() -> bool:
                return await self.rt.state_store.extend(name, owner, ttl_ms)

            try:
                return await self._refresh_locked(integration_id, margin, renew)
            finally:
                # The lock expires on its own if the store is gone; only its owner deletes it.
                with contextlib.suppress(StateUnavailable):
                    await self.rt.state_store.release(name, owner)
        except StateUnavailable:
            return await self._without_lock(integration_id)

    async def _without_lock(self, integration_id: str) -> Loaded:
        """The lock backend is down. A refresh without the lock could spend a rotating
        refresh token twice, from two processes, so there is none: a token that has not
        expired yet is still handed out, an expired one is a 503."""
        integration, credential = await self._reload(integration_id)
        if (credential is not None and credential.expires_at is not None
                and credential.expires_at > utcnow()):
            log.warning("state store unreachable: not refreshing, the current token is still "
                        "valid", extra={"integration_id": integration_id})
            return integration, credential
        raise Unavailable("The state store is unreachable, so this token cannot be refreshed "
                          "safely; try again later.", code="lock_unavailable")

    async def _refresh_locked(self, integration_id: str, margin: timedelta,
                              renew: Callable[[], Awaitable[bool]]) -> Loaded:
        integration, credential = await self._reload(integration_id)
        provider = self.rt.providers[integration.provider]
        now = utcnow()
        if (credential is None or integration.status != "active"
                or integration.health_status == "reauth_required"
                or not needs_refresh(provider, credential, now, margin)):
            return integration, credential  # disconnected, paused, or a sibling refreshed
        if self._spent.get(integration_id) == credential.version:
            raise Conflict("The provider rotated this grant's refresh token and the new one "
                           "could not be stored; reconnect the integration.",
                           code="reauth_required")
        assert isinstance(provider, OAuth2Provider)
        client = self.rt.clients.get(provider.slug)
        if client is None:
            raise Unavailable(f"No OAuth app is configured for {provider.name}.",
                              code="provider_not_configured")
        old = store.open_credential(self.rt.ring, integration, credential)
        assert old.refresh_token is not None
        # The lease restarts here, so it outlasts the provider call and the write after it
        # (check_timeouts). A holder whose lease lapsed (a stall) may have been overtaken by
        # another process and must not spend the refresh token.
        if not await renew():
            integration, credential = await self._reload(integration_id)
            if credential is not None and not needs_refresh(provider, credential, utcnow(),
                                                            margin):
                return integration, credential
            raise Unavailable("This process lost the refresh lock; try again.",
                              code="refresh_busy")
        started = time.monotonic()
        try:
            token = await flow.refresh(provider, client, refresh_token=old.refresh_token,
                                       inputs=inputs_of(provider, integration),
                                       timeout=self.rt.settings.provider_timeout)
        except flow.ExchangeError as exc:
            self.rt.metrics.refreshes.labels(provider.slug, "permanent" if exc.code in PERMANENT
                                             else "transient").inc()
            return await self._failed(integration_id, credential, old.refresh_token, exc.code)
        finally:
            self.rt.metrics.provider_calls.labels(provider.slug, "refresh").observe(
                time.monotonic() - started)
        self.rt.metrics.refreshes.labels(provider.slug, "success").inc()
        new_secrets = store.Secrets(access_token=token.access_token,
                                    refresh_token=token.refresh_token or old.refresh_token,
                                    fields=old.fields)
        rotated = token.refresh_token not in (None, old.refresh_token)
        persist_until = time.monotonic() + PERSIST_SECONDS
        attempts = 0
        while True:
            attempts += 1
            try:
                # Each attempt ends by the deadline too, so the lease covers all of them. An
                # attempt cut short after its commit landed is recognised by the next one.
                async with asyncio.timeout(max(0.1, persist_until - time.monotonic())):
                    stored = await self._store(integration, credential, old, new_secrets,
                                               token, rotated, now)
            except (SQLAlchemyError, OSError) as exc:  # TimeoutError is an OSError
                pause = PERSIST_BACKOFF * 2 ** (attempts - 1)
                log.warning("could not store refreshed tokens", extra={
                    "integration_id": integration_id, "attempt": attempts,
                    "reason": type(exc).__name__})
                if time.monotonic() + pause >= persist_until:
                    break
                await asyncio.sleep(pause)
                continue
            if stored is None:
                # Disconnected meanwhile: the disconnect wins, and what the provider just
                # minted must not outlive it there.
                await self._revoke_minted(provider, integration, new_secrets, rotated)
                return await self._reload(integration_id)
            return stored
        await self._unpersisted(integration, credential, rotated, attempts)

    async def _store(self, integration: Integration, credential: Credential,
                     old: store.Secrets, new_secrets: store.Secrets, token: Any,
                     rotated: bool, now: datetime) -> Loaded | None:
        """Write the provider's answer with a compare-and-swap on the version read before the
        call; None when the integration was disconnected meanwhile. Raises what the database
        raises, for the caller to retry."""
        provider = self.rt.providers[integration.provider]
        assert isinstance(provider, OAuth2Provider)
        integration_id = integration.id
        expected = credential.version
        for _ in range(3):
            async with self.rt.sessions() as session:
                current = await load(session, integration_id=integration_id)
                if current is None or current[1] is None:
                    return None
                integration, now_stored = current
                if now_stored.version != expected:
                    # Rewritten meanwhile. A key rotation only re-wraps the envelope: the
                    # tokens are the ones just spent, so these new ones must still be kept.
                    stored = store.open_credential(self.rt.ring, integration, now_stored)
                    if rotated and stored.refresh_token == new_secrets.refresh_token:
                        return integration, now_stored  # ours: only the commit's reply was lost
                    if stored.refresh_token != old.refresh_token:
                        # A newer grant was written (a sibling, a reinstall): this answer is
                        # stale and must not overwrite it.
                        log.warning("refresh result dropped: a newer credential was stored "
                                    "meanwhile", extra={"integration_id": integration_id,
                                                        "read_version": credential.version,
                                                        "stored_version": now_stored.version})
                        return integration, now_stored
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
                                   details={"rotated": rotated})
                await session.commit()
                return await self._reload(integration_id)
        raise Unavailable("The credential kept changing during the refresh; try again.",
                          code="refresh_busy")

    async def _revoke_minted(self, provider: OAuth2Provider, integration: Integration,
                             minted: store.Secrets, rotated: bool) -> None:
        """Best effort: revoke what the provider issued to a refresh that lost to a
        disconnect (the refresh token when it is new, else the access token)."""
        client = self.rt.clients.get(provider.slug)
        if client is None or provider.revoke_url is None:
            return
        hint = "refresh_token" if rotated else "access_token"
        token = minted.refresh_token if rotated else minted.access_token
        if token is None:
            return
        done = await flow.revoke(self.rt.http, provider, client, token=token, hint=hint,
                                 inputs=inputs_of(provider, integration))
        log.info("revoked the tokens of a refresh that lost to a disconnect" if done else
                 "could not revoke the tokens of a refresh that lost to a disconnect",
                 extra={"integration_id": integration.id, "hint": hint})

    async def _unpersisted(self, integration: Integration, credential: Credential,
                           rotated: bool, attempts: int) -> NoReturn:
        if not rotated:
            # The stored refresh token is still the live one: an ordinary transient failure.
            raise Unavailable("The refreshed token could not be stored; try again later.",
                              code="refresh_failed")
        # The provider rotated the refresh token and the new one is lost. The stored one is
        # spent, and presenting it again may make the provider revoke the whole grant (RFC
        # 9700 4.14.2): no more refreshes until a person reconnects. Never a token here.
        self._spent[integration.id] = credential.version
        log.error("refreshed tokens could not be stored; the integration needs a reconnect",
                  extra={"integration_id": integration.id, "attempts": attempts,
                         "alert": "refresh_unpersisted"})
        try:
            async with self.rt.sessions() as session:
                row = await session.get(Integration, integration.id)
                if row is not None and row.status != "disconnected":
                    row.health_status = "reauth_required"
                    row.error_message = ("New tokens from the provider could not be stored "
                                         "(refresh_unpersisted); reconnect the integration.")
                    row.updated_at = utcnow()
                    store.record_event(session, type="credential.refresh_unpersisted",
                                       project_id=row.project_id, integration=row,
                                       actor_key_id=None, request_id=None,
                                       details={"attempts": attempts})
                    await session.commit()
        except (SQLAlchemyError, OSError) as exc:
            log.critical("could not flag an integration whose refreshed tokens were lost",
                         extra={"integration_id": integration.id,
                                "reason": type(exc).__name__, "alert": "refresh_unpersisted"})
        raise Unavailable("The provider's new tokens could not be stored; reconnect the "
                          "integration.", code="refresh_unpersisted")

    async def _failed(self, integration_id: str, seen: Credential, spent: str,
                      code: str) -> Loaded:
        now = utcnow()
        async with self.rt.sessions() as session:
            current = await load(session, integration_id=integration_id)
            if current is None or current[1] is None:
                return await self._reload(integration_id)
            integration, credential = current
            if credential.version != seen.version and store.open_credential(
                    self.rt.ring, integration, credential).refresh_token != spent:
                # The refresh token was spent by a sibling that wrote first: a lost race,
                # not a revoked grant. Use what it wrote. (A key rewrap also changes the
                # version, but not the token: then the refusal stands.)
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
        if code == "timeout":
            raise ProviderTimeout("The provider did not answer the refresh in time; try again "
                                  "later.")
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
