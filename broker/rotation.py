"""Key rotation: move every credential's data key onto the ring's primary key, online.

The work list is stateless (``key_id <> primary``), so a run killed at any point resumes by
running again. Rows are taken in batches with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and
written with a compare-and-swap on their version, one transaction per batch: a refresh that
races the rewrap either waits for the batch or is skipped until later, and nobody's write is
lost. A row that does not decrypt is counted, reported and never rewritten. One runner at a
time: a PostgreSQL advisory lock (SQLite serialises writers by itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.crypto import KeyRing, RowContext
from broker.db import sessionmaker, utcnow
from broker.errors import CryptoError
from broker.models import Credential, Integration

ADVISORY_LOCK = 0x6B657973  # "keys"


class AlreadyRunning(Exception):
    """Another rewrap holds the lock."""


@dataclass
class Progress:
    total: int
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    failed_ids: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        return self.processed / max(time.monotonic() - self.started, 1e-6)


async def rows_per_key(engine: AsyncEngine) -> dict[str, int]:
    async with sessionmaker(engine)() as session:
        rows = await session.execute(
            select(Credential.key_id, func.count()).group_by(Credential.key_id))
        return {kid: n for kid, n in rows}


async def rewrap(engine: AsyncEngine, ring: KeyRing, *, batch: int = 500,
                 reencrypt: bool = False,
                 report: Callable[[Progress], None] | None = None) -> Progress:
    """Re-wrap (or with ``reencrypt``, re-encrypt under fresh data keys) every credential
    not yet on the primary key."""
    primary = ring.primary_id
    postgres = engine.dialect.name == "postgresql"
    async with engine.connect() as lock_conn:
        if postgres:
            got = await lock_conn.scalar(text("SELECT pg_try_advisory_lock(:k)"),
                                         {"k": ADVISORY_LOCK})
            await lock_conn.commit()
            if not got:
                raise AlreadyRunning("already running: another `broker keys rewrap` holds "
                                     "the lock")
        try:
            return await _run(engine, ring, primary, batch, reencrypt, postgres, report)
        finally:
            if postgres:
                await lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"),
                                        {"k": ADVISORY_LOCK})
                await lock_conn.commit()


async def _run(engine: AsyncEngine, ring: KeyRing, primary: str, batch: int, reencrypt: bool,
               postgres: bool, report: Callable[[Progress], None] | None) -> Progress:
    # --reencrypt rewrites every row once; otherwise the rows not on the primary key.
    where = [] if reencrypt else [Credential.key_id != primary]
    async with engine.connect() as conn:
        total = await conn.scalar(select(func.count()).select_from(Credential).where(*where))
    progress = Progress(total=int(total or 0))
    failed: set[str] = set()
    c, i = Credential.__table__.c, Integration.__table__.c
    write = (update(Credential.__table__)
             .where(c.integration_id == bindparam("row_id"), c.version == bindparam("seen"))
             .values(key_id=primary, version=bindparam("seen") + 1, updated_at=bindparam("now"),
                     data_key_ct=bindparam("dk"),
                     **({name: bindparam(name) for name in FIELDS} if reencrypt else {})))
    while True:
        moved, cursor = 0, ""
        while True:
            async with engine.begin() as conn:
                query = (select(c.integration_id, c.version, c.data_key_ct,
                                *(c[name] for name in FIELDS), i.project_id, i.provider)
                         .join_from(Credential.__table__, Integration.__table__,
                                    i.id == c.integration_id)
                         .where(*where, c.integration_id > cursor)
                         .order_by(c.integration_id).limit(batch))
                if postgres:
                    # Held rows: skip them now (a refresh is writing them; it writes with
                    # the primary key anyway) and take them on the next pass.
                    query = query.with_for_update(skip_locked=not reencrypt,
                                                  of=Credential.__table__)
                rows = (await conn.execute(query)).all()
                if not rows:
                    break
                cursor = rows[-1].integration_id
                now, updates = utcnow(), []
                for row in rows:
                    if row.integration_id in failed:
                        continue
                    progress.processed += 1
                    try:
                        updates.append({"row_id": row.integration_id, "seen": row.version,
                                        "now": now, **_rewritten(ring, row, reencrypt)})
                    except CryptoError:
                        # Left byte for byte as it is: never re-encrypt a failed decryption.
                        failed.add(row.integration_id)
                        progress.failed += 1
                        progress.failed_ids.append(row.integration_id)
                if updates:
                    # One statement for the batch; the version check makes each row a
                    # compare-and-swap, so a concurrent writer's row is left for a later pass.
                    await conn.execute(write, updates)
                    moved += len(updates)
                    progress.succeeded += len(updates)
            if report:
                report(progress)
        if reencrypt or moved == 0:
            return progress
        # Rows skipped while a writer held them are still on the old key: go round again
        # until only the undecryptable ones are left.
        async with engine.connect() as conn:
            left = await conn.scalar(select(func.count()).select_from(Credential)
                                     .where(*where))
        if int(left or 0) <= len(failed):
            return progress


FIELDS = ("access_token_ct", "refresh_token_ct", "secret_ct")


def _rewritten(ring: KeyRing, row: Any, reencrypt: bool) -> dict[str, Any]:
    ctx = RowContext(row.project_id, row.provider, row.integration_id)
    if not reencrypt:
        return {"dk": ring.rewrap(ctx, row.data_key_ct)}
    plain = ring.open(ctx, row.data_key_ct, {
        "access_token": row.access_token_ct, "refresh_token": row.refresh_token_ct,
        "secret": row.secret_ct})
    sealed = ring.seal(ctx, plain)
    return {"dk": sealed.data_key, "access_token_ct": sealed.fields["access_token"],
            "refresh_token_ct": sealed.fields["refresh_token"],
            "secret_ct": sealed.fields["secret"]}
