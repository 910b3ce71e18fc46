"""Short-lived state shared by the broker's processes: OAuth state records and connect
forms. Redis when ``BROKER_REDIS_URL`` is set, process memory otherwise; one interface.

Records are stored under the SHA-256 of their key, with a TTL, and taken atomically
(``GETDEL``): a record is handed out once, however many requests race for it. With Redis
configured but unreachable every call raises :class:`StateUnavailable` (a 503); there is no
fallback to memory, which would split the state between processes. Every call is bounded as
a whole, so a paused or black-holed Redis costs a request at most ``CALL_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# Seconds one state-store call may take, reconnecting included.
CALL_TIMEOUT = 2.0


class StateUnavailable(Exception):
    """The state store cannot be reached."""


def _key(kind: str, token: str) -> str:
    return f"broker:{kind}:{hashlib.sha256(token.encode()).hexdigest()}"


class StateStore(Protocol):
    async def put(self, kind: str, token: str, record: dict[str, Any], ttl: int) -> None: ...
    async def get(self, kind: str, token: str) -> dict[str, Any] | None: ...
    async def take(self, kind: str, token: str) -> dict[str, Any] | None: ...
    async def hit(self, name: str, window: int) -> int: ...
    async def count(self, name: str) -> int: ...
    async def acquire(self, name: str, ttl_ms: int) -> str | None: ...
    async def release(self, name: str, owner: str) -> None: ...
    async def extend(self, name: str, owner: str, ttl_ms: int) -> bool: ...
    async def publish(self, channel: str, message: str) -> None: ...
    def subscribe(self, channel: str) -> AsyncIterator[str]: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


# Delete the lock only if this owner still holds it: a holder whose lock expired must not
# release the next holder's.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Likewise, only the owner may extend its lock.
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class MemoryState:
    """One process only: ``take`` is atomic because the event loop runs one coroutine at a
    time and it does not await between reading and deleting."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[float, str]] = {}

    def _live(self, key: str) -> str | None:
        found = self._records.get(key)
        if found is None:
            return None
        if found[0] <= time.monotonic():
            del self._records[key]
            return None
        return found[1]

    async def put(self, kind: str, token: str, record: dict[str, Any], ttl: int) -> None:
        now = time.monotonic()
        self._records = {k: v for k, v in self._records.items() if v[0] > now}
        self._records[_key(kind, token)] = (now + ttl, json.dumps(record))

    async def get(self, kind: str, token: str) -> dict[str, Any] | None:
        raw = self._live(_key(kind, token))
        return None if raw is None else json.loads(raw)

    async def take(self, kind: str, token: str) -> dict[str, Any] | None:
        key = _key(kind, token)
        raw = self._live(key)
        self._records.pop(key, None)
        return None if raw is None else json.loads(raw)

    async def hit(self, name: str, window: int) -> int:
        """Count one event in a fixed window of ``window`` seconds; returns the count."""
        key = f"broker:rate:{name}"
        count = int(self._live(key) or 0) + 1
        expires = self._records[key][0] if count > 1 else time.monotonic() + window
        self._records[key] = (expires, str(count))
        return count

    async def count(self, name: str) -> int:
        return int(self._live(f"broker:rate:{name}") or 0)

    async def acquire(self, name: str, ttl_ms: int) -> str | None:
        key, owner = f"broker:lock:{name}", secrets.token_hex(16)
        if self._live(key) is not None:
            return None
        self._records[key] = (time.monotonic() + ttl_ms / 1000, owner)
        return owner

    async def release(self, name: str, owner: str) -> None:
        key = f"broker:lock:{name}"
        if self._live(key) == owner:
            del self._records[key]

    async def extend(self, name: str, owner: str, ttl_ms: int) -> bool:
        key = f"broker:lock:{name}"
        if self._live(key) != owner:
            return False
        self._records[key] = (time.monotonic() + ttl_ms / 1000, owner)
        return True

    async def publish(self, channel: str, message: str) -> None:
        return None  # one process: nobody else to tell

    async def subscribe(self, channel: str) -> AsyncIterator[str]:
        await asyncio.Event().wait()  # never yields; ends when cancelled
        yield ""

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._records.clear()


class RedisState:
    def __init__(self, url: str, timeout: float = CALL_TIMEOUT):
        self._timeout = timeout
        # One immediate reconnect: a pooled connection the server closed (CLIENT KILL, a
        # restart) is replaced without failing the request. More (redis-py defaults to
        # ten) only hammer a Redis that is down, within the same budget.
        self._redis = aioredis.from_url(url, socket_timeout=timeout,
                                        socket_connect_timeout=timeout,
                                        health_check_interval=10, retry=Retry(NoBackoff(), 1))

    async def _call(self, command: str, *args: Any) -> Any:
        try:
            # The socket timeouts bound each connect and read, not their sum over a
            # reconnect; the request's budget is for the call as a whole.
            async with asyncio.timeout(self._timeout):
                return await self._redis.execute_command(command, *args)
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            raise StateUnavailable(type(exc).__name__) from None

    async def put(self, kind: str, token: str, record: dict[str, Any], ttl: int) -> None:
        await self._call("SET", _key(kind, token), json.dumps(record), "EX", ttl)

    async def get(self, kind: str, token: str) -> dict[str, Any] | None:
        raw = await self._call("GET", _key(kind, token))
        return None if raw is None else json.loads(raw)

    async def take(self, kind: str, token: str) -> dict[str, Any] | None:
        raw = await self._call("GETDEL", _key(kind, token))
        return None if raw is None else json.loads(raw)

    async def hit(self, name: str, window: int) -> int:
        key = f"broker:rate:{name}"
        # Create the counter with its expiry first, so a crash can never leave one that
        # lives for ever; INCR keeps the expiry.
        await self._call("SET", key, 0, "EX", window, "NX")
        return int(await self._call("INCR", key))

    async def count(self, name: str) -> int:
        return int(await self._call("GET", f"broker:rate:{name}") or 0)

    async def acquire(self, name: str, ttl_ms: int) -> str | None:
        """A lock owned by a random token, expiring after ``ttl_ms`` whatever happens."""
        owner = secrets.token_hex(16)
        done = await self._call("SET", f"broker:lock:{name}", owner, "NX", "PX", ttl_ms)
        return owner if done else None

    async def release(self, name: str, owner: str) -> None:
        await self._call("EVAL", RELEASE, 1, f"broker:lock:{name}", owner)

    async def extend(self, name: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._call("EVAL", EXTEND, 1, f"broker:lock:{name}", owner, ttl_ms))

    async def publish(self, channel: str, message: str) -> None:
        await self._call("PUBLISH", f"broker:{channel}", message)

    async def subscribe(self, channel: str) -> AsyncIterator[str]:
        """Messages on ``channel``, reconnecting after an outage (callers must tolerate
        missed messages: anything they cache expires on its own)."""
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(f"broker:{channel}")
                    async for message in pubsub.listen():
                        data = message.get("data")
                        yield data.decode() if isinstance(data, bytes) else str(data)
            except (RedisError, OSError):
                await asyncio.sleep(1)

    async def ping(self) -> bool:
        try:
            return bool(await self._call("PING"))
        except StateUnavailable:
            return False

    async def close(self) -> None:
        await self._redis.aclose()


def open_state(redis_url: str | None) -> StateStore:
    return RedisState(redis_url) if redis_url else MemoryState()
