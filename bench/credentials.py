"""Credential reads per second and p99 latency, next to a bare Starlette endpoint.

Starts, on this machine: a fresh PostgreSQL database on 127.0.0.1:5432, Redis on
127.0.0.1:6379 (both must be running), one `broker serve` process and one bare Starlette app
under the same uvicorn settings (one process, no access log). Stores a non-expiring
credential, then drives both with wrk (Debian package `wrk`) at 32 connections and prints
both figures and the ratio. Nothing here is a test: it measures.

    python bench/credentials.py [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker import apikeys, migrate, store  # noqa: E402
from broker.crypto import Key, KeyRing  # noqa: E402
from broker.db import create_engine, sessionmaker, utcnow  # noqa: E402
from broker.models import ServiceToken  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
UVICORN = ["--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {url}")
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"server did not start: {url}")


def wrk(url: str, seconds: int, connections: int, header: str | None) -> tuple[float, float]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if header:
        cmd[1:1] = ["-H", header]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in out:
        raise SystemExit(f"non-2xx responses from {url}:\n{out}")
    return rps, p99


async def seed(url: str, ring: KeyRing) -> tuple[str, str]:
    engine = create_engine(url)
    try:
        async with sessionmaker(engine)() as s:
            await store.ensure_project(s, "prj_bench")
            integration = await store.upsert_integration(
                s, project_id="prj_bench", provider="acme", setup_type="oauth")
            await store.write_credential(
                s, ring, integration, store.Secrets(access_token="at-" + "x" * 40,
                                                    refresh_token="rt-bench"),
                token_type="bearer", scopes=["read"], expires_at=utcnow() + timedelta(days=1))
            public, token = apikeys.generate(apikeys.SERVICE_TOKEN_PREFIX)
            s.add(ServiceToken(id=f"st_{public}", name="bench", created_at=utcnow(),
                               token_hash=apikeys.digest(token)))
            await s.commit()
    finally:
        await engine.dispose()
    return "/internal/v1/projects/prj_bench/integrations/acme/credentials", token


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    name = f"broker_bench_{secrets.token_hex(4)}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    db_url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        migrate.upgrade(db_url)
        material = secrets.token_bytes(32)
        ring = KeyRing([Key("kbench", material)], "kbench")
        providers = Path(f"/tmp/{name}.toml")
        providers.write_text('[providers.acme]\nname = "Acme"\n'
                             'authorize_url = "https://acme.example/authorize"\n'
                             'token_url = "https://acme.example/token"\n')
        path, token = asyncio.run(seed(db_url, ring))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update(BROKER_DATABASE_URL=db_url, BROKER_REDIS_URL="redis://127.0.0.1:6379/0",
                   BROKER_PROVIDERS_FILE=str(providers), BROKER_LOG_LEVEL="WARNING",
                   BROKER_KEYS=json.dumps({"primary": "kbench", "keys": [
                       {"id": "kbench", "secret": base64.b64encode(material).decode()}]}))
        bport, sport = free_port(), free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "broker", "serve", "--port",
                                       str(bport)], env=env, cwd=ROOT))
        procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.bare:app",
                                       "--port", str(sport), *UVICORN], cwd=ROOT))
        broker_url, bare_url = f"http://127.0.0.1:{bport}{path}", f"http://127.0.0.1:{sport}/credentials"
        wait_up(f"http://127.0.0.1:{bport}/healthz", procs[0])
        wait_up(bare_url, procs[1])
        auth = f"Authorization: Bearer {token}"
        check = httpx2.get(broker_url, headers={"Authorization": f"Bearer {token}"})
        assert check.status_code == 200, check.text
        wrk(bare_url, 2, args.connections, None)  # warm-up
        wrk(broker_url, 2, args.connections, auth)
        bare = wrk(bare_url, args.seconds, args.connections, None)
        broker = wrk(broker_url, args.seconds, args.connections, auth)
        print(f"bare Starlette   {bare[0]:9.0f} req/s   p99 {bare[1]:7.2f} ms")
        print(f"broker /credentials {broker[0]:6.0f} req/s   p99 {broker[1]:7.2f} ms")
        print(f"ratio            {broker[0] / bare[0]:9.1%} of the bare endpoint's throughput "
              f"(target 50%, p99 under 10 ms)")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=15)
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
