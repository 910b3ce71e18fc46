"""Alembic environment: async engine from the URL that ``broker migrate`` passes in."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from broker import models  # noqa: F401  (registers the tables on Base.metadata)
from broker.db import Base, create_engine

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_engine(context.config.attributes["database_url"], migrating=True)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `broker migrate`")
asyncio.run(_main())
