"""The ``broker`` command: serve, dev, migrate, and the operator commands.

Operator commands talk to the database directly (``BROKER_DATABASE_URL``); none needs a
running broker.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from broker import apikeys, keycheck, registry, store
from broker.cli_client import add_client_commands
from broker.crypto import KeyRing, add_key, promote_key, remove_key, set_disabled
from broker.db import create_engine, sessionmaker, utcnow
from broker.errors import ConfigError
from broker.models import ApiKey, Credential, ServiceToken
from broker.settings import DEFAULT_DATA_DIR, DEFAULT_PUBLIC_URL, Settings
from broker.spec import OAuth2Provider, Provider, ProviderError

PROJECT_ID_HELP = "project id (letters, digits, _ and -; created when missing)"


def _fail(message: str) -> int:
    print(f"broker: error: {message}", file=sys.stderr)
    return 2


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


async def _with_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
    engine = create_engine(settings.database_url)
    try:
        async with sessionmaker(engine)() as session:
            return await work(session)
    finally:
        await engine.dispose()


# -- serve / dev / migrate -------------------------------------------------------------------

async def preflight(settings: Settings) -> KeyRing:
    """Refuse to start, with a message an operator can act on, rather than fail later."""
    from broker import migrate  # Alembic is slow to import; only these commands need it.

    ring = settings.ring()
    engine = create_engine(settings.database_url)
    try:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise ConfigError(f"cannot reach the database at {_safe_url(settings.database_url)}"
                              f" ({type(exc).__name__}); check BROKER_DATABASE_URL") from None
        current, head = await migrate.current_revision(engine), migrate.head_revision()
        if current != head:
            raise ConfigError(f"the database schema is at {current or 'nothing'}, not {head}; "
                              "run `broker migrate` first")
        async with sessionmaker(engine)() as session:
            in_use = await store.key_ids_in_use(session)
        if missing := sorted(in_use - set(ring.ids)):
            raise ConfigError(f"the key ring lacks key {', '.join(missing)}, still used by "
                              "stored credentials; add it back to the ring")
        if disabled := sorted(in_use & set(ring.disabled_ids)):
            raise ConfigError(f"key {', '.join(disabled)} is disabled but stored credentials "
                              f"still use it; `broker keys enable {disabled[0]}`")
        # Same id, other material: every read would fail (KS-10). Records the fingerprints
        # of keys seen for the first time.
        if mismatched := await keycheck.verify(engine, ring):
            raise ConfigError(keycheck.describe(mismatched))
    finally:
        await engine.dispose()
    return ring


def app_from_env() -> Any:
    """uvicorn factory for ``serve --workers N`` (each worker process builds its own app)."""
    from broker import logs
    from broker.app import create_app

    settings = Settings.from_env()
    logs.configure(settings.log_level)
    return create_app(settings)


def _serve(settings: Settings, host: str, port: int, workers: int,
           worker: bool = False) -> int:
    import uvicorn

    from broker import logs
    from broker.app import create_app

    if workers > 1 and not settings.redis_url:
        return _fail("--workers > 1 needs BROKER_REDIS_URL: OAuth state and locks must be "
                     "shared between processes")
    try:
        ring = asyncio.run(preflight(settings))
    except ConfigError as exc:
        return _fail(str(exc))
    logs.configure(settings.log_level)
    # The client address (rate limits, logs) comes from X-Forwarded-For only when the peer is
    # a proxy listed in BROKER_FORWARDED_ALLOW_IPS.
    common: dict[str, Any] = {"host": host, "port": port, "log_config": None,
                              "access_log": False, "server_header": False,
                              "proxy_headers": True,
                              "forwarded_allow_ips": list(settings.forwarded_allow_ips)}
    if workers > 1:
        if worker:
            return _fail("--worker runs with one process; run `broker worker` beside "
                         "`serve --workers N` instead")
        uvicorn.run("broker.cli:app_from_env", factory=True, workers=workers, **common)
    else:
        uvicorn.run(create_app(settings, ring=ring, worker=worker), **common)
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    return _serve(settings, args.host, args.port, args.workers, args.worker)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Refresh ahead of expiry and run health checks until interrupted."""
    import signal

    from broker import logs
    from broker import worker as background
    from broker.credentials import Credentials
    from broker.runtime import open_runtime

    try:
        ring = asyncio.run(preflight(settings))
    except ConfigError as exc:
        return _fail(str(exc))
    logs.configure(settings.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with open_runtime(settings, ring=ring) as runtime:
            await background.run(runtime, Credentials(runtime), stop, args.interval)

    asyncio.run(main())
    return 0


def _migrate(settings: Settings) -> None:
    from broker import migrate

    try:
        migrate.upgrade(settings.database_url)
    except (OSError, SQLAlchemyError) as exc:
        raise ConfigError(f"cannot migrate the database at {_safe_url(settings.database_url)}"
                          f" ({type(exc).__name__}); check BROKER_DATABASE_URL") from None


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from broker.migrate import head_revision

    _migrate(settings)
    print(f"database at {_safe_url(settings.database_url)} is at schema {head_revision()}")
    return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    """Embedded defaults: SQLite, in-process state, a generated key ring, a demo project."""
    if not settings.keys_file and not settings.keys:
        keys_file = DEFAULT_DATA_DIR / "keys.json"
        if not keys_file.exists():
            kid, _ = add_key(keys_file)
            print(f"created a development key ring at {keys_file} (key {kid})")
        settings = dataclasses.replace(settings, keys_file=keys_file.resolve())
    if settings.public_url == DEFAULT_PUBLIC_URL:
        settings = dataclasses.replace(settings, public_url=f"http://{args.host}:{args.port}")
    _migrate(settings)
    key = asyncio.run(_with_session(settings, lambda s: _create_api_key(
        s, args.project, list(apikeys.SCOPES), "broker dev")))
    print(f"""
  Broker running on embedded defaults (SQLite, in-process state).
  Project:  {args.project}
  API key:  {key['key']}   (shown once; scopes read, integrations:write)
  Try:      curl -H 'X-API-Key: {key['key']}' \\
              http://{args.host}:{args.port}/v1/projects/{args.project}/integrations/catalog
""", flush=True)
    return _serve(settings, args.host, args.port, 1, worker=True)


# -- keys ------------------------------------------------------------------------------------

def cmd_keys_add(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else settings.keys_file
    if path is None:
        return _fail("give --file PATH or set BROKER_KEYS_FILE")
    kid, primary = add_key(path)
    role = "primary" if primary else "decrypt-only (promote it once every instance has it)"
    print(f"added key {kid} to {path}: {role}")
    return 0


def _ring_file(settings: Settings, args: argparse.Namespace) -> Path:
    path = Path(args.file) if args.file else settings.keys_file
    if path is None:
        raise ConfigError("give --file PATH or set BROKER_KEYS_FILE (a ring given inline in "
                          "BROKER_KEYS is edited where it is kept)")
    return path


def cmd_keys_promote(settings: Settings, args: argparse.Namespace) -> int:
    path = _ring_file(settings, args)
    promote_key(path, args.id)
    print(f"{args.id} is now the primary key in {path}. Roll the ring out to every instance, "
          "then run `broker keys rewrap`.")
    return 0


def cmd_keys_rewrap(settings: Settings, args: argparse.Namespace) -> int:
    from broker import rotation

    ring = settings.ring()

    def report(p: rotation.Progress) -> None:
        left = max(p.total - p.processed, 0)
        print(f"\r{p.processed}/{p.total} rows, {left} left, {p.failed} failed, "
              f"{p.rate:,.0f} rows/s", end="", file=sys.stderr, flush=True)

    async def run() -> rotation.Progress:
        engine = create_engine(settings.database_url)
        try:
            # Wrapping data keys under a key the rest of the fleet knows by another
            # material would make them unreadable there: refuse a ring that does not match.
            if mismatched := await keycheck.verify(engine, ring):
                raise ConfigError(keycheck.describe(mismatched))
            return await rotation.rewrap(engine, ring, batch=args.batch,
                                         reencrypt=args.reencrypt,
                                         report=None if args.quiet else report)
        finally:
            await engine.dispose()

    try:
        progress = asyncio.run(run())
    except rotation.AlreadyRunning as exc:
        return _fail(str(exc))
    if not args.quiet:
        print(file=sys.stderr)
    summary = {"processed": progress.processed, "succeeded": progress.succeeded,
               "failed": progress.failed, "failed_ids": progress.failed_ids,
               "primary": ring.primary_id}
    print(json.dumps(summary) if args.json else
          f"re-wrapped {progress.succeeded} credentials onto {ring.primary_id}"
          + (f"; {progress.failed} did not decrypt and were left untouched: "
             f"{', '.join(progress.failed_ids[:20])}" if progress.failed else ""))
    return 1 if progress.failed else 0


def _rows_using(settings: Settings, key_id: str) -> int:
    from broker import rotation

    async def count() -> int:
        engine = create_engine(settings.database_url)
        try:
            return (await rotation.rows_per_key(engine)).get(key_id, 0)
        finally:
            await engine.dispose()

    return asyncio.run(count())


def cmd_keys_disable(settings: Settings, args: argparse.Namespace) -> int:
    path = _ring_file(settings, args)
    ring = KeyRing.load(path, None, settings.key_secrets)
    if args.id not in ring.ids:
        return _fail(f"key {args.id} is not in {path}")
    if args.id == ring.primary_id:
        return _fail(f"key {args.id} is the primary; promote another key first")
    if rows := _rows_using(settings, args.id):
        return _fail(f"key {args.id} still protects {rows} credentials; run "
                     "`broker keys rewrap` first")
    set_disabled(path, args.id, True)
    print(f"disabled {args.id} in {path}: nothing decrypts with it. Roll the ring out; "
          f"`broker keys enable {args.id}` undoes this, `broker keys retire {args.id}` "
          "removes the key for good.")
    return 0


def cmd_keys_enable(settings: Settings, args: argparse.Namespace) -> int:
    path = _ring_file(settings, args)
    set_disabled(path, args.id, False)
    print(f"enabled {args.id} in {path}: it decrypts again once the ring is rolled out.")
    return 0


def cmd_keys_retire(settings: Settings, args: argparse.Namespace) -> int:
    path = _ring_file(settings, args)
    rows = _rows_using(settings, args.id)
    if rows:
        return _fail(f"key {args.id} still protects {rows} credentials; run "
                     "`broker keys rewrap` first")
    remove_key(path, args.id)
    print(f"retired {args.id}: removed from {path}")
    return 0


def cmd_keys_status(settings: Settings, args: argparse.Namespace) -> int:
    ring = settings.ring()

    async def counts(session: AsyncSession) -> dict[str, int]:
        rows = await session.execute(
            select(Credential.key_id, func.count()).group_by(Credential.key_id))
        return {kid: n for kid, n in rows}

    used = asyncio.run(_with_session(settings, counts))
    status = [{"id": kid, "primary": kid == ring.primary_id, "rows": used.get(kid, 0),
               "in_ring": kid in ring.ids, "disabled": kid in ring.disabled_ids}
              for kid in sorted(set(ring.ids) | set(used))]
    if args.json:
        print(json.dumps(status))
    else:
        for s in status:
            flags = " primary" if s["primary"] else ""
            flags += " disabled" if s["disabled"] else ""
            flags += "" if s["in_ring"] else " MISSING FROM RING"
            print(f"{s['id']}  rows={s['rows']}{flags}")
    return 0


# -- api keys and service tokens ------------------------------------------------------------

async def _create_api_key(session: AsyncSession, project: str, scopes: list[str],
                          label: str | None) -> dict[str, Any]:
    key_id, secret = await store.create_api_key(session, project, scopes, label)
    return {"id": key_id, "key": secret, "project": project, "scopes": scopes}


def _scopes(value: str) -> list[str]:
    scopes = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in scopes if s not in apikeys.SCOPES]
    if bad or not scopes:
        raise argparse.ArgumentTypeError(f"scopes are a comma list of {', '.join(apikeys.SCOPES)}")
    return list(dict.fromkeys(scopes))


def _project_id(value: str) -> str:
    if not store.PROJECT_ID.match(value):
        raise argparse.ArgumentTypeError("project ids are 1-64 letters, digits, _ or -")
    return value


def cmd_api_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    out = asyncio.run(_with_session(settings, lambda s: _create_api_key(
        s, args.project, args.scopes, args.label)))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"created {out['id']} for project {out['project']} "
              f"(scopes {', '.join(out['scopes'])})\n{out['key']}\n"
              "This key is shown once; store it now.")
    return 0


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def cmd_api_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        query = select(ApiKey).order_by(ApiKey.created_at)
        if args.project:
            query = query.where(ApiKey.project_id == args.project)
        return [{"id": k.id, "project": k.project_id, "scopes": k.scopes, "label": k.label,
                 "created_at": _iso(k.created_at), "last_used_at": _iso(k.last_used_at),
                 "revoked_at": _iso(k.revoked_at), "expires_at": _iso(k.expires_at)}
                for k in await session.scalars(query)]

    rows = asyncio.run(_with_session(settings, work))
    if args.json:
        print(json.dumps(rows))
    for r in rows if not args.json else []:
        ends = r["expires_at"]
        state = ("revoked" if r["revoked_at"] else "active" if not ends else
                 f"expired {ends}" if datetime.fromisoformat(ends) <= utcnow() else
                 f"active until {ends}")
        print(f"{r['id']}  {r['project']}  {','.join(r['scopes'])}  {state}  "
              f"last used {r['last_used_at'] or 'never'}")
    return 0


def cmd_api_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> str | None:
        key = await session.get(ApiKey, args.id, with_for_update=True)
        if key is None:
            return None
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            store.record_event(session, type="api_key.revoked", project_id=key.project_id,
                               actor_key_id=None, request_id=None,
                               details={"api_key_id": key.id})
            await session.commit()
        return key.id

    if asyncio.run(_with_session(settings, work)) is None:
        return _fail(f"no API key {args.id!r}")
    print(f"revoked {args.id}")
    return 0


DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")
SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> timedelta:
    match = DURATION.fullmatch(value)
    if not match:
        raise argparse.ArgumentTypeError("a duration is a number with s, m, h or d (90s, 7d)")
    return timedelta(seconds=int(match.group(1)) * SECONDS[match.group(2)])


def cmd_api_keys_expire(settings: Settings, args: argparse.Namespace) -> int:
    """End a key at a set time: the old key's side of a rotation overlap (AK-08)."""
    async def work(session: AsyncSession) -> str:
        key = await session.get(ApiKey, args.id, with_for_update=True)
        if key is None:
            return f"no API key {args.id!r}"
        now = utcnow()
        if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
            # An end that passed is final: moving it would bring a dead key back.
            return f"API key {args.id!r} is already revoked or expired"
        key.expires_at = now + args.in_
        store.record_event(session, type="api_key.expiry_set", project_id=key.project_id,
                           actor_key_id=None, request_id=None,
                           details={"api_key_id": key.id, "expires_at": _iso(key.expires_at)})
        await session.commit()
        return ""

    problem = asyncio.run(_with_session(settings, work))
    if problem:
        return _fail(problem)
    print(f"{args.id} stops working in {int(args.in_.total_seconds())} s")
    return 0


def cmd_service_tokens_create(settings: Settings, args: argparse.Namespace) -> int:
    token_id, secret = asyncio.run(_with_session(
        settings, lambda s: store.create_service_token(s, args.name)))
    if args.json:
        print(json.dumps({"id": token_id, "token": secret, "name": args.name}))
    else:
        print(f"created {token_id} ({args.name})\n{secret}\nThis token is shown once.")
    return 0


def cmd_service_tokens_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        rows = await session.scalars(select(ServiceToken).order_by(ServiceToken.created_at))
        return [{"id": t.id, "name": t.name, "created_at": _iso(t.created_at),
                 "last_used_at": _iso(t.last_used_at), "revoked_at": _iso(t.revoked_at)}
                for t in rows]

    rows = asyncio.run(_with_session(settings, work))
    print(json.dumps(rows) if args.json else "\n".join(
        f"{r['id']}  {r['name']}  {'revoked' if r['revoked_at'] else 'active'}" for r in rows))
    return 0


def cmd_service_tokens_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> int:
        result = await session.execute(
            update(ServiceToken).where(ServiceToken.id == args.id,
                                       ServiceToken.revoked_at.is_(None))
            .values(revoked_at=utcnow()))
        await session.commit()
        return int(getattr(result, "rowcount", 0))

    if not asyncio.run(_with_session(settings, work)):
        return _fail(f"no active service token {args.id!r}")
    asyncio.run(_announce_revocation(settings))
    print(f"revoked {args.id}")
    return 0


async def _announce_revocation(settings: Settings) -> None:
    """Tell running brokers to forget the service tokens they cached (otherwise they do
    within a second)."""
    from broker.credentials import CHANNEL
    from broker.state import StateUnavailable, open_state

    if not settings.redis_url:
        return
    state = open_state(settings.redis_url)
    try:
        await state.publish(CHANNEL, json.dumps({"service_tokens": "revoked"}))
    except StateUnavailable:
        print("warning: Redis unreachable; brokers stop accepting the token within 1 s",
              file=sys.stderr)
    finally:
        await state.close()


# -- providers -------------------------------------------------------------------------------

def provider_json(p: Provider) -> dict[str, Any]:
    oauth = p if isinstance(p, OAuth2Provider) else None
    return {
        "slug": p.slug, "name": p.name, "setup_type": p.setup_type, "category": p.category,
        "description": p.description, "docs_url": p.docs_url,
        "authorize_url": oauth.authorize_url if oauth else None,
        "token_url": oauth.token_url if oauth else None,
        "revoke_url": oauth.revoke_url if oauth else None,
        "scopes": list(oauth.scopes) if oauth else [],
        "scope_separator": oauth.scope_separator if oauth else None,
        "pkce": oauth.pkce if oauth else None,
        "fields": [{"name": f.name, "label": f.label, "secret": f.secret,
                    "pattern": f.pattern, "choices": list(f.choices)} for f in p.fields],
        "actions": [a.name for a in p.actions],
    }


def cmd_providers(settings: Settings, args: argparse.Namespace) -> int:
    try:
        providers = registry.load()
    except ProviderError as exc:
        return _fail(str(exc))
    if args.action == "check":
        print(f"{len(providers)} providers valid: {', '.join(providers)}")
        return 0
    if args.action == "show":
        if args.slug not in providers:
            return _fail(f"no provider {args.slug!r}; see `broker providers list`")
        shown = provider_json(providers[args.slug])
        print(json.dumps(shown, indent=None if args.json else 2))
        return 0
    rows = [provider_json(p) for p in providers.values()]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['slug']:<20} {r['setup_type']:<8} {r['category']:<16} {r['name']}")
    return 0


# -- parser ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker", description="OAuth handshake and credential broker. Settings come "
        "from BROKER_* environment variables (see deploy/env.example).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, handler: Callable[..., int], help: str,
            parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    def server_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=8000, help="port (default 8000)")

    p = cmd("serve", cmd_serve, "serve the broker (needs a key ring and a migrated database)")
    server_args(p)
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes; more than 1 needs BROKER_REDIS_URL")
    p.add_argument("--worker", action="store_true",
                   help="also run the background worker (refresh, health checks) in this "
                   "process; for single-process setups")
    p = cmd("worker", cmd_worker, "run the background worker: refresh tokens ahead of "
            "expiry and check each integration's health; one runner at a time across instances")
    p.add_argument("--interval", type=float, default=30.0,
                   help="seconds between sweeps (default 30)")
    p = cmd("dev", cmd_dev, "run on embedded defaults: SQLite, in-process state and worker, a "
            "generated dev key ring in .broker/, a demo project and a fresh API key printed once")
    server_args(p)
    p.add_argument("--project", type=_project_id, default="prj_demo",
                   help="demo project id (default prj_demo)")
    cmd("migrate", cmd_migrate, "bring the database schema up to date (idempotent)")

    keys = cmd("keys", lambda *_: 0, "manage the encryption key ring").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    p = cmd("add", cmd_keys_add, "add a key: the primary of a new ring file, else a "
            "decrypt-only key", keys)
    p.add_argument("--file", help="key ring file (default: BROKER_KEYS_FILE)")
    p = cmd("promote", cmd_keys_promote, "make a key the primary (new writes use it); "
            "add it to every instance's ring first", keys)
    p.add_argument("id", help="the key id")
    p.add_argument("--file", help="key ring file (default: BROKER_KEYS_FILE)")
    p = cmd("rewrap", cmd_keys_rewrap, "move every credential onto the primary key, online, "
            "in batches; safe to kill and run again; exits 1 if a row does not decrypt", keys)
    p.add_argument("--batch", type=int, default=500, help="rows per transaction (default 500)")
    p.add_argument("--reencrypt", action="store_true",
                   help="also re-encrypt every payload under a fresh data key (after a "
                   "suspected compromise)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p = cmd("disable", cmd_keys_disable, "stop a key from decrypting, reversibly; refused "
            "for the primary and while any credential still uses it", keys)
    p.add_argument("id", help="the key id")
    p.add_argument("--file", help="key ring file (default: BROKER_KEYS_FILE)")
    p = cmd("enable", cmd_keys_enable, "let a disabled key decrypt again", keys)
    p.add_argument("id", help="the key id")
    p.add_argument("--file", help="key ring file (default: BROKER_KEYS_FILE)")
    p = cmd("retire", cmd_keys_retire, "remove a key from the ring for good; refused while "
            "any credential still uses it", keys)
    p.add_argument("id", help="the key id")
    p.add_argument("--file", help="key ring file (default: BROKER_KEYS_FILE)")
    p = cmd("status", cmd_keys_status, "list ring keys and how many credentials use each", keys)
    p.add_argument("--json", action="store_true", help="print JSON")

    ak = cmd("api-keys", lambda *_: 0, "manage project API keys").add_subparsers(
        dest="api_keys_command", required=True, metavar="ACTION")
    p = cmd("create", cmd_api_keys_create, "create an API key (printed once)", ak)
    p.add_argument("--project", required=True, type=_project_id, help=PROJECT_ID_HELP)
    p.add_argument("--scopes", type=_scopes, default=["read"],
                   help="comma list of read, integrations:write (default read)")
    p.add_argument("--label", help="a note for operators")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cmd("list", cmd_api_keys_list, "list API keys (never their secrets)", ak)
    p.add_argument("--project", type=_project_id, help="only this project's keys")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cmd("revoke", cmd_api_keys_revoke, "revoke an API key; effective on the next request",
            ak)
    p.add_argument("id", help="the key id (ak_...)")
    p = cmd("expire", cmd_api_keys_expire, "make an API key stop working after a delay, for "
            "a rotation overlap: create the new key, expire the old one, move clients", ak)
    p.add_argument("id", help="the key id (ak_...)")
    p.add_argument("--in", dest="in_", required=True, type=_duration, metavar="DURATION",
                   help="from now: seconds, or a number with s, m, h or d (e.g. 7d)")

    st = cmd("service-tokens", lambda *_: 0, "manage internal-API service tokens"
             ).add_subparsers(dest="st_command", required=True, metavar="ACTION")
    p = cmd("create", cmd_service_tokens_create, "create a service token (printed once)", st)
    p.add_argument("--name", required=True, help="who uses it (e.g. main-api)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cmd("list", cmd_service_tokens_list, "list service tokens", st)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cmd("revoke", cmd_service_tokens_revoke, "revoke a service token", st)
    p.add_argument("id", help="the token id (st_...)")

    pv = cmd("providers", cmd_providers, "inspect registered providers").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = cmd("list", cmd_providers, "list providers", pv)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cmd("show", cmd_providers, "show one provider", pv)
    p.add_argument("slug")
    p.add_argument("--json", action="store_true", help="print JSON on one line")
    p = cmd("check", cmd_providers, "validate every registered provider declaration", pv)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    add_client_commands(sub, cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.handler(settings, args))
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
