"""Engine and session factory; the declarative base with a stable naming convention."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.types import TypeDecorator

from broker.errors import ConfigError

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")

# PostgreSQL: seconds to open a connection, and for one statement. Without them a database
# that stops answering (a partition, a black-holed address) holds each request, and its
# pooled connection, until TCP gives up: asyncpg waits 60 s to connect and for ever on a
# statement. No statement of the broker's comes near these.
CONNECT_TIMEOUT = 5.0
STATEMENT_TIMEOUT = 30.0
# SQLSTATE classes that mean "the database cannot serve now", not "this request is wrong":
# connection exception, transaction rollback (serialization, deadlock), insufficient
# resources (disk full), operator intervention (shutdown, recovery), system error.
UNAVAILABLE_SQLSTATES = ("08", "40", "53", "57", "58")
READ_ONLY_SQLSTATE = "25006"  # a failover left the pool on a standby


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out; SQLite stores no offset of its own."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def async_url(url: str) -> str:
    """Map the plain URLs operators write onto the async drivers the broker uses."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError("BROKER_DATABASE_URL is not a database URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:// or postgresql://")


def create_engine(url: str, *, migrating: bool = False) -> AsyncEngine:
    """The engine for ``url``. Migrations have no statement timeout: a schema change on a
    large table may rightly take longer than any request should."""
    target = async_url(url)
    if target.startswith("sqlite"):
        database = make_url(target).database
        if database and database != ":memory:":
            # The embedded default lives in ./.broker/; make the folder rather than fail.
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(target, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # pool_pre_ping: a connection the server dropped (restart, pg_terminate_backend) is
    # replaced at checkout, so the first request after an outage succeeds.
    return create_async_engine(target, pool_size=10, max_overflow=10, pool_pre_ping=True,
                               hide_parameters=True,
                               connect_args={"timeout": CONNECT_TIMEOUT,
                                             "command_timeout": None if migrating
                                             else STATEMENT_TIMEOUT})


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be used for now (a 503: retry later) rather
    than that the code or the request is wrong (a 500)."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError):
            return True  # SQLite's "database is locked" and "disk I/O error" land here
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        if sqlstate[:2] in UNAVAILABLE_SQLSTATES or sqlstate == READ_ONLY_SQLSTATE:
            return True
        exc = exc.orig  # type: ignore[assignment]
    # Refused, reset or timed out; asyncpg raises these unwrapped when it connects.
    return isinstance(exc, OSError | sa_exc.TimeoutError)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    # A Session class of its own, so that event listeners (cache invalidation) attach to
    # this runtime's sessions only, never globally.
    session_class = type("BrokerSession", (Session,), {})
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=session_class)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """A timestamp as the API shows it: UTC, seconds, ``Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None
