"""Rewrap throughput on PostgreSQL, next to a plain bulk UPDATE of the same rows.

Seeds N credentials (default 100,000) in a fresh database on 127.0.0.1:5432, times
`rotation.rewrap` moving all of them to a new primary key, then times one bulk UPDATE that
rewrites the same column on every row, and prints both rates and the ratio. It measures:
nothing here is a test.

    python bench/rewrap.py [--rows 100000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker import migrate, rotation  # noqa: E402
from broker.crypto import Key, KeyRing, RowContext  # noqa: E402
from broker.db import create_engine  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


async def seed(dsn: str, ring: KeyRing, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        projects = [(f"prj_{i}", f"prj_{i}") for i in range(rows // 100 + 1)]
        await conn.executemany(
            "INSERT INTO projects (id, name, created_at) VALUES ($1, $2, now())", projects)
        integrations, credentials = [], []
        for i in range(rows):
            project, provider, iid = f"prj_{i // 100}", f"p{i % 100}", f"int_{i:012d}"
            sealed = ring.seal(RowContext(project, provider, iid),
                               {"access_token": b"at-" + os.urandom(20),
                                "refresh_token": b"rt-" + os.urandom(20), "secret": None})
            integrations.append((iid, project, provider))
            credentials.append((iid, sealed.key_id, sealed.data_key,
                                sealed.fields["access_token"], sealed.fields["refresh_token"]))
        await conn.executemany(
            "INSERT INTO integrations (id, project_id, provider, status, setup_type, "
            "sidebar_enabled, settings, allowed_actions, metadata, created_at, updated_at) "
            "VALUES ($1, $2, $3, 'active', 'oauth', true, '{}', '[]', '{}', now(), now())",
            integrations)
        await conn.executemany(
            "INSERT INTO credentials (integration_id, key_id, data_key_ct, access_token_ct, "
            "refresh_token_ct, scopes, version, refresh_failures, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, '[]', 1, 0, now(), now())", credentials)
    finally:
        await conn.close()


async def main(rows: int, batch: int) -> None:
    name = f"broker_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        await asyncio.to_thread(migrate.upgrade, dsn)
        k1, k2 = Key("k1", os.urandom(32)), Key("k2", os.urandom(32))
        started = time.perf_counter()
        await seed(dsn, KeyRing([k1], "k1"), rows)
        print(f"seeded {rows:,} credentials in {time.perf_counter() - started:.1f} s")
        engine = create_engine(dsn)
        try:
            started = time.perf_counter()
            progress = await rotation.rewrap(engine, KeyRing([k1, k2], "k2"), batch=batch)
            rewrap_s = time.perf_counter() - started
        finally:
            await engine.dispose()
        assert progress.succeeded == rows and progress.failed == 0, progress
        conn = await asyncpg.connect(dsn)
        try:
            started = time.perf_counter()
            await conn.execute("UPDATE credentials SET data_key_ct = data_key_ct || ''::bytea, "
                               "key_id = 'k3', version = version + 1, updated_at = now()")
            bulk_s = time.perf_counter() - started
        finally:
            await conn.close()
        print(f"rewrap (batches of {batch})  {rows / rewrap_s:10,.0f} credentials/s "
              f"({rewrap_s:.1f} s)")
        print(f"plain bulk UPDATE        {rows / bulk_s:10,.0f} rows/s ({bulk_s:.1f} s)")
        print(f"ratio                    {bulk_s / rewrap_s:10.1%} of the bulk UPDATE's rate")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.batch))
