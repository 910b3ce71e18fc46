"""The ``broker`` console script, run for real in a subprocess (DESIGN 1.4-1.6).

Every call gets an explicit environment: this process's environment minus any ``BROKER_*``
variable, plus what the test sets. Key rings and SQLite files live in ``tmp_path``; the
operator commands that touch storage also run against PostgreSQL (the ``database`` fixture).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from broker import keycheck, migrate, store
from broker.cli import build_parser
from broker.crypto import Key, KeyRing, add_key
from broker.db import create_engine, sessionmaker
from broker.models import Project
from tests.conftest import Database, make_ring, new_project

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60


# -- helpers ---------------------------------------------------------------------------------

def broker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    # Run this checkout's code whatever the working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def broker(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *args], cwd=cwd,
                          env=broker_env(**env), capture_output=True, text=True,
                          timeout=TIMEOUT)


def show(r: subprocess.CompletedProcess[str]) -> str:
    return f"exit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, show(r)
    return r.stdout


def refused(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Non-zero exit with a one-line operator message (no traceback) naming the problem."""
    assert r.returncode != 0, show(r)
    assert "Traceback" not in r.stderr, show(r)
    for needle in needles:
        assert needle in r.stderr, f"{needle!r} not in the message\n{show(r)}"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def migrated_sqlite(tmp_path: Path) -> str:
    url = sqlite_url(tmp_path / "broker.db")
    migrate.upgrade(url)
    return url


def ring_file(tmp_path: Path, name: str = "keys.json") -> tuple[Path, str]:
    path = tmp_path / name
    kid, primary = add_key(path)
    assert primary
    return path, kid


async def _write_credential(url: str, ring: KeyRing, project: str) -> None:
    engine = create_engine(url)
    try:
        async with sessionmaker(engine)() as s:
            await store.ensure_project(s, project)
            integration = await store.upsert_integration(
                s, project_id=project, provider="slack", setup_type="oauth")
            await store.write_credential(
                s, ring, integration, store.Secrets(access_token="at-1", refresh_token="rt-1"))
            await s.commit()
    finally:
        await engine.dispose()


def write_credential(url: str, ring: KeyRing, project: str | None = None) -> None:
    asyncio.run(_write_credential(url, ring, project or new_project()))


async def _project_exists(url: str, project: str) -> bool:
    engine = create_engine(url)
    try:
        async with sessionmaker(engine)() as s:
            return await s.get(Project, project) is not None
    finally:
        await engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- help ------------------------------------------------------------------------------------

def _command_paths() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [()]

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append((*prefix, name))
                    walk(sub, (*prefix, name))

    walk(build_parser(), ())
    return found


CONTRACT_COMMANDS = {
    ("serve",), ("dev",), ("migrate",), ("keys",), ("keys", "add"), ("keys", "status"),
    ("api-keys",), ("api-keys", "create"), ("api-keys", "list"), ("api-keys", "revoke"),
    ("service-tokens",), ("service-tokens", "create"), ("service-tokens", "list"),
    ("service-tokens", "revoke"),
    ("providers",), ("providers", "list"), ("providers", "show"), ("providers", "check"),
}


def test_parser_has_the_contract_commands() -> None:
    missing = CONTRACT_COMMANDS - set(_command_paths())
    assert not missing, f"commands missing from `broker`: {sorted(missing)}"


COMMAND_PATHS = _command_paths()


@pytest.fixture(scope="module")
def help_runs(tmp_path_factory: pytest.TempPathFactory
              ) -> dict[tuple[str, ...], Future[subprocess.CompletedProcess[str]]]:
    """Every ``--help`` call, run a few at a time (each one is a Python start-up)."""
    cwd = tmp_path_factory.mktemp("help")
    with ThreadPoolExecutor(max_workers=4) as pool:
        return {c: pool.submit(broker, cwd, *c, "--help") for c in COMMAND_PATHS}


@pytest.mark.parametrize("command", COMMAND_PATHS, ids=lambda c: " ".join(("broker", *c)))
def test_help_exits_zero(
        help_runs: dict[tuple[str, ...], Future[subprocess.CompletedProcess[str]]],
        command: tuple[str, ...]) -> None:
    out = ok(help_runs[command].result())
    assert out.startswith("usage: broker" + "".join(f" {c}" for c in command)), out


# -- keys add --------------------------------------------------------------------------------

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_add_creates_a_ring_then_adds_a_decrypt_only_key(tmp_path: Path) -> None:
    path = tmp_path / "ring" / "keys.json"
    out = ok(broker(tmp_path, "keys", "add", "--file", str(path)))
    assert _mode(path) == 0o600
    doc = json.loads(path.read_text())
    assert set(doc) >= {"primary", "keys"}
    assert [k["id"] for k in doc["keys"]] == [doc["primary"]]
    first = doc["primary"]
    assert first in out and "primary" in out
    KeyRing.load(path, None)  # a ring the broker itself accepts

    out = ok(broker(tmp_path, "keys", "add", "--file", str(path)))
    assert _mode(path) == 0o600
    doc = json.loads(path.read_text())
    ids = [k["id"] for k in doc["keys"]]
    assert doc["primary"] == first
    assert len(ids) == 2 and len(set(ids)) == 2 and ids[0] == first
    assert ids[1] in out and "decrypt-only" in out
    ring = KeyRing.load(path, None)
    assert ring.primary_id == first and set(ring.ids) == set(ids)


def test_keys_add_defaults_to_broker_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "env-keys.json"
    ok(broker(tmp_path, "keys", "add", BROKER_KEYS_FILE=str(path)))
    doc = json.loads(path.read_text())
    assert [k["id"] for k in doc["keys"]] == [doc["primary"]]
    assert _mode(path) == 0o600


def test_keys_add_without_a_file_refuses(tmp_path: Path) -> None:
    r = broker(tmp_path, "keys", "add")
    refused(r, "--file", "BROKER_KEYS_FILE")
    assert list(tmp_path.iterdir()) == []


def test_keys_add_on_a_file_that_is_not_json_refuses_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("not json\n")
    r = broker(tmp_path, "keys", "add", "--file", str(path))
    assert path.read_text() == "not json\n"  # never overwritten
    refused(r, str(path))


# -- keys status -----------------------------------------------------------------------------

def test_keys_status_json_counts_rows_per_key(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path)
    path, primary = ring_file(tmp_path)
    second, became_primary = add_key(path)
    assert not became_primary
    ring = KeyRing.load(path, None)
    write_credential(url, ring)
    write_credential(url, ring)
    write_credential(url, make_ring("kretired1"))  # a key the ring no longer holds

    out = ok(broker(tmp_path, "keys", "status", "--json",
                    BROKER_DATABASE_URL=url, BROKER_KEYS_FILE=str(path)))
    status = json.loads(out)
    assert isinstance(status, list)
    for entry in status:
        assert set(entry) >= {"id", "primary", "rows"}, entry
    by_id = {e["id"]: e for e in status}
    assert set(by_id) == {primary, second, "kretired1"}
    assert (by_id[primary]["primary"], by_id[primary]["rows"]) == (True, 2)
    assert (by_id[second]["primary"], by_id[second]["rows"]) == (False, 0)
    assert (by_id["kretired1"]["primary"], by_id["kretired1"]["rows"]) == (False, 1)


# -- migrate ---------------------------------------------------------------------------------

def test_migrate_is_idempotent_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    head = migrate.head_revision()
    assert head
    for _ in range(2):
        out = ok(broker(tmp_path, "migrate", BROKER_DATABASE_URL=sqlite_url(db)))
        assert head in out
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
                (head,)]


def test_migrate_refuses_an_unreachable_database_cleanly(tmp_path: Path) -> None:
    r = broker(tmp_path, "migrate",
               BROKER_DATABASE_URL="postgresql://nobody:hunter2@127.0.0.1:1/x")
    assert "hunter2" not in r.stdout + r.stderr
    refused(r, "127.0.0.1:1")


def test_migrate_again_on_a_migrated_database(tmp_path: Path, database: Database) -> None:
    out = ok(broker(tmp_path, "migrate", BROKER_DATABASE_URL=database.url))
    assert str(migrate.head_revision()) in out


# -- api keys --------------------------------------------------------------------------------

def _api_key(tmp_path: Path, url: str, project: str) -> dict[str, Any]:
    out = ok(broker(tmp_path, "api-keys", "create", "--project", project,
                    "--scopes", "read,integrations:write", "--json", BROKER_DATABASE_URL=url))
    return dict(json.loads(out))


def _api_keys(tmp_path: Path, url: str, project: str) -> tuple[str, list[dict[str, Any]]]:
    out = ok(broker(tmp_path, "api-keys", "list", "--project", project, "--json",
                    BROKER_DATABASE_URL=url))
    return out, json.loads(out)


def test_api_keys_create_json_and_creates_the_project(tmp_path: Path,
                                                      database: Database) -> None:
    project = new_project()
    assert not asyncio.run(_project_exists(database.url, project))
    created = _api_key(tmp_path, database.url, project)
    assert set(created) == {"id", "key", "project", "scopes"}
    assert created["key"].startswith("riq_")
    assert created["project"] == project
    assert created["scopes"] == ["read", "integrations:write"]
    assert created["id"] and created["key"] not in created["id"]
    assert asyncio.run(_project_exists(database.url, project))


def test_api_keys_list_never_shows_the_key_and_revoke_shows_revoked_at(
        tmp_path: Path, database: Database) -> None:
    project = new_project()
    created = _api_key(tmp_path, database.url, project)
    out, rows = _api_keys(tmp_path, database.url, project)
    assert created["key"] not in out
    assert [r["id"] for r in rows] == [created["id"]]
    assert rows[0]["revoked_at"] is None
    assert "key" not in rows[0] and "key_hash" not in rows[0]

    ok(broker(tmp_path, "api-keys", "revoke", created["id"], BROKER_DATABASE_URL=database.url))
    out, rows = _api_keys(tmp_path, database.url, project)
    assert created["key"] not in out
    assert [r["id"] for r in rows] == [created["id"]]
    assert rows[0]["revoked_at"], rows


def test_api_keys_revoke_unknown_id_fails(tmp_path: Path, database: Database) -> None:
    r = broker(tmp_path, "api-keys", "revoke", "ak_doesnotexist0",
               BROKER_DATABASE_URL=database.url)
    refused(r, "ak_doesnotexist0")


@pytest.mark.parametrize("scopes", ["admin", "read,admin", ","])
def test_api_keys_create_with_bad_scopes_is_a_usage_error(tmp_path: Path, scopes: str) -> None:
    db = tmp_path / "untouched.db"
    r = broker(tmp_path, "api-keys", "create", "--project", "prj_x", "--scopes", scopes,
               "--json", BROKER_DATABASE_URL=sqlite_url(db))
    assert r.returncode == 2, show(r)
    assert "scopes" in r.stderr and r.stdout == "", show(r)
    assert not db.exists()  # rejected before anything touched storage


def test_api_keys_create_with_bad_project_id_is_a_usage_error(tmp_path: Path) -> None:
    db = tmp_path / "untouched.db"
    r = broker(tmp_path, "api-keys", "create", "--project", "no spaces/allowed", "--json",
               BROKER_DATABASE_URL=sqlite_url(db))
    assert r.returncode == 2, show(r)
    assert not db.exists()


# -- service tokens --------------------------------------------------------------------------

def _tokens(tmp_path: Path, url: str) -> tuple[str, list[dict[str, Any]]]:
    out = ok(broker(tmp_path, "service-tokens", "list", "--json", BROKER_DATABASE_URL=url))
    return out, json.loads(out)


def test_service_tokens_create_list_revoke(tmp_path: Path, database: Database) -> None:
    name = f"main-api-{new_project()}"
    out = ok(broker(tmp_path, "service-tokens", "create", "--name", name, "--json",
                    BROKER_DATABASE_URL=database.url))
    created = json.loads(out)
    assert set(created) >= {"id", "token"}
    assert created["id"] and created["token"] and created["token"] not in created["id"]

    out, rows = _tokens(tmp_path, database.url)
    assert created["token"] not in out
    mine = [r for r in rows if r["id"] == created["id"]]
    assert len(mine) == 1 and mine[0]["name"] == name and mine[0]["revoked_at"] is None
    assert "token" not in mine[0] and "token_hash" not in mine[0]

    ok(broker(tmp_path, "service-tokens", "revoke", created["id"],
              BROKER_DATABASE_URL=database.url))
    out, rows = _tokens(tmp_path, database.url)
    assert created["token"] not in out
    mine = [r for r in rows if r["id"] == created["id"]]
    assert len(mine) == 1 and mine[0]["revoked_at"], mine


def test_service_tokens_revoke_unknown_id_fails(tmp_path: Path, database: Database) -> None:
    r = broker(tmp_path, "service-tokens", "revoke", "st_doesnotexist0",
               BROKER_DATABASE_URL=database.url)
    refused(r, "st_doesnotexist0")


# -- providers -------------------------------------------------------------------------------

PROVIDER_KEYS = {"slug", "name", "setup_type", "category", "authorize_url", "token_url"}


@pytest.fixture(scope="module")
def providers_json(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = ok(broker(tmp_path_factory.mktemp("providers"), "providers", "list", "--json"))
    return list(json.loads(out))


def test_providers_list_json_shape(providers_json: list[dict[str, Any]]) -> None:
    assert isinstance(providers_json, list) and providers_json
    for entry in providers_json:
        assert isinstance(entry, dict) and set(entry) >= PROVIDER_KEYS, entry
    slugs = [p["slug"] for p in providers_json]
    assert len(slugs) == len(set(slugs))
    assert set(slugs) >= {"slack", "shopify", "mailgun", "postmark"}


@pytest.mark.parametrize("slug", ["slack", "shopify"])
def test_providers_list_oauth_entries(providers_json: list[dict[str, Any]], slug: str) -> None:
    entry = next(p for p in providers_json if p["slug"] == slug)
    assert entry["setup_type"] == "oauth"
    assert entry["authorize_url"].startswith("https://")
    assert entry["token_url"].startswith("https://")


@pytest.mark.parametrize("slug", ["mailgun", "postmark"])
def test_providers_list_api_key_entries(providers_json: list[dict[str, Any]],
                                        slug: str) -> None:
    entry = next(p for p in providers_json if p["slug"] == slug)
    assert entry["setup_type"] == "api_key"
    assert entry["authorize_url"] is None
    assert entry["token_url"] is None


def test_providers_show_slack_json(tmp_path: Path,
                                   providers_json: list[dict[str, Any]]) -> None:
    out = ok(broker(tmp_path, "providers", "show", "slack", "--json"))
    assert len(out.strip().splitlines()) == 1
    shown = json.loads(out)
    assert shown == next(p for p in providers_json if p["slug"] == "slack")


def test_providers_show_unknown_fails(tmp_path: Path) -> None:
    refused(broker(tmp_path, "providers", "show", "nope"), "nope")


def test_providers_check(tmp_path: Path) -> None:
    out = ok(broker(tmp_path, "providers", "check"))
    for slug in ("slack", "shopify", "mailgun", "postmark"):
        assert slug in out


# -- serve: refusals -------------------------------------------------------------------------

def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return broker(tmp_path, "serve", "--host", "127.0.0.1", "--port", str(free_port()), *args,
                  **env)


def test_serve_refuses_without_a_key_ring(tmp_path: Path) -> None:
    r = serve(tmp_path, BROKER_DATABASE_URL=migrated_sqlite(tmp_path))
    refused(r, "key ring", "BROKER_KEYS_FILE")


def test_serve_refuses_workers_without_redis(tmp_path: Path) -> None:
    keys, _ = ring_file(tmp_path)
    r = serve(tmp_path, "--workers", "2", BROKER_DATABASE_URL=migrated_sqlite(tmp_path),
              BROKER_KEYS_FILE=str(keys))
    refused(r, "BROKER_REDIS_URL")


def test_serve_refuses_an_unreachable_database(tmp_path: Path) -> None:
    keys, _ = ring_file(tmp_path)
    r = serve(tmp_path, BROKER_DATABASE_URL="postgresql://nobody:hunter2@127.0.0.1:1/x",
              BROKER_KEYS_FILE=str(keys))
    refused(r, "database", "127.0.0.1:1", "BROKER_DATABASE_URL")
    assert "hunter2" not in r.stderr + r.stdout  # the password is never printed


def test_serve_refuses_a_database_not_migrated(tmp_path: Path) -> None:
    keys, _ = ring_file(tmp_path)
    r = serve(tmp_path, BROKER_DATABASE_URL=sqlite_url(tmp_path / "empty.db"),
              BROKER_KEYS_FILE=str(keys))
    refused(r, "broker migrate")


def test_serve_refuses_a_ring_lacking_a_key_in_use(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path)
    write_credential(url, make_ring("kmissing7"))
    keys, other = ring_file(tmp_path)
    assert other != "kmissing7"
    r = serve(tmp_path, BROKER_DATABASE_URL=url, BROKER_KEYS_FILE=str(keys))
    refused(r, "kmissing7")


def _ring_json_file(tmp_path: Path, keys: dict[str, tuple[bytes, bool]], primary: str) -> Path:
    path = tmp_path / "ring.json"
    path.write_text(json.dumps({"primary": primary, "keys": [
        {"id": kid, "secret": base64.b64encode(material).decode(), "disabled": disabled}
        for kid, (material, disabled) in keys.items()]}))
    return path


async def _record_fingerprints(url: str, ring: KeyRing) -> list[str]:
    engine = create_engine(url)
    try:
        return await keycheck.verify(engine, ring)
    finally:
        await engine.dispose()


def test_serve_refuses_a_ring_whose_key_changed_under_its_id(tmp_path: Path) -> None:
    url, good = migrated_sqlite(tmp_path), os.urandom(32)
    ring = KeyRing([Key("kchanged1", good)], "kchanged1")
    write_credential(url, ring)
    assert asyncio.run(_record_fingerprints(url, ring)) == []
    keys = _ring_json_file(tmp_path, {"kchanged1": (os.urandom(32), False)}, "kchanged1")
    refused(serve(tmp_path, BROKER_DATABASE_URL=url, BROKER_KEYS_FILE=str(keys)),
            "kchanged1", "fingerprint")


def test_serve_refuses_a_disabled_key_in_use(tmp_path: Path) -> None:
    url, old = migrated_sqlite(tmp_path), os.urandom(32)
    write_credential(url, KeyRing([Key("kold1", old)], "kold1"))
    keys = _ring_json_file(tmp_path, {"kold1": (old, True), "knew1": (os.urandom(32), False)},
                           "knew1")
    refused(serve(tmp_path, BROKER_DATABASE_URL=url, BROKER_KEYS_FILE=str(keys)),
            "kold1", "disabled", "keys enable")


# -- serve: starts ---------------------------------------------------------------------------

@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_serve_starts_and_answers_healthz(tmp_path: Path,
                                          stop_later: list[subprocess.Popen[bytes]]) -> None:
    url = migrated_sqlite(tmp_path)
    keys, _ = ring_file(tmp_path)
    write_credential(url, KeyRing.load(keys, None))  # a ring holding every key in use
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=broker_env(BROKER_DATABASE_URL=url, BROKER_KEYS_FILE=str(keys)),
            stdout=sink, stderr=subprocess.STDOUT)
    stop_later.append(proc)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    answer: tuple[int, Any] | None = None
    deadline = time.monotonic() + 15
    while answer is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                answer = (resp.status, json.loads(resp.read()))
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    assert answer == (200, {"status": "ok"}), (
        f"exit {proc.poll()}; no healthy answer on port {port}\n{log.read_text()}")
    proc.terminate()
    assert proc.wait(timeout=TIMEOUT) is not None


def test_dev_runs_on_embedded_defaults_and_prints_a_working_key(
        tmp_path: Path, stop_later: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    log = tmp_path / "dev.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "dev", "--port", str(port)],
            cwd=tmp_path, env=broker_env(), stdout=sink, stderr=subprocess.STDOUT)
    stop_later.append(proc)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline, catalog = time.monotonic() + 20, None
    while catalog is None and time.monotonic() < deadline and proc.poll() is None:
        keys = re.findall(r"riq_[A-Za-z0-9]+", log.read_text())
        if keys:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/projects/prj_demo/integrations/catalog",
                headers={"X-API-Key": keys[0]})
            try:
                with opener.open(request, timeout=2) as resp:
                    catalog = json.loads(resp.read())["data"]
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.1)
    assert catalog, f"exit {proc.poll()}\n{log.read_text()}"
    assert {"slack", "shopify", "postmark"} <= {entry["provider"] for entry in catalog}
    assert (tmp_path / ".broker" / "keys.json").exists()
    assert (tmp_path / ".broker" / "broker.db").exists()
    proc.terminate()
    assert proc.wait(timeout=TIMEOUT) is not None
