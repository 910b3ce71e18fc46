"""The background worker: proactive refresh, health checks, one runner across instances."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from broker import store, worker
from broker.crypto import KeyRing
from broker.db import utcnow
from broker.models import Integration
from broker.settings import Settings
from tests.conftest import new_project
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import POSTMARK_TOKEN, FakeState
from tests.test_connect import Flow, flow_settings, make_flow  # noqa: F401
from tests.test_credentials import installed, refreshes

pytestmark = pytest.mark.anyio


@pytest.fixture
async def f(flow_settings: Settings, ring: KeyRing,  # noqa: F811
            fakes: tuple[str, FakeState]) -> AsyncIterator[Flow]:
    async for value in make_flow(flow_settings, ring, fakes):
        yield value


async def _integration(f: Flow, integration_id: str) -> Integration:
    async with f.app.state.sessions() as s:
        row = await s.get(Integration, integration_id)
        assert row is not None
        return row


async def _postmark(f: Flow, token: str) -> str:
    project = new_project()
    async with f.app.state.sessions() as s:
        await store.ensure_project(s, project)
        integration = await store.upsert_integration(s, project_id=project,
                                                     provider="postmark", setup_type="api_key")
        integration.last_synced_at = None
        await store.write_credential(s, f.app.state.ring, integration,
                                     store.Secrets(fields={"server_token": token}))
        await s.commit()
        return integration.id


async def _sweep(f: Flow) -> tuple[int, int]:
    return await worker.sweep(f.app.state, f.app.state.credentials)


async def test_tokens_are_refreshed_ahead_of_expiry(f: Flow) -> None:
    # Tokens of their own: the sweep also meets credentials other tests left in the shared
    # database, and the fake spends a refresh token at its first use.
    soon_token, later_token = f"rt-soon-{uuid.uuid4().hex}", f"rt-later-{uuid.uuid4().hex}"
    _, soon = await installed(f, expires_in=timedelta(minutes=8), refresh_token=soon_token)
    _, later = await installed(f, expires_in=timedelta(hours=2), refresh_token=later_token)
    refreshed, _ = await _sweep(f)
    assert refreshed >= 1
    bodies = [r["body"]["refresh_token"] for r in refreshes(f)]
    assert soon_token in bodies and later_token not in bodies
    assert (await _integration(f, soon)).health_status == "healthy"


async def test_reauth_required_integrations_are_left_alone(f: Flow) -> None:
    _, integration_id = await installed(f, expires_in=timedelta(minutes=1))
    async with f.app.state.sessions() as s:
        await s.execute(update(Integration).where(Integration.id == integration_id)
                        .values(health_status="reauth_required"))
        await s.commit()
    await _sweep(f)
    assert refreshes(f) == []


async def test_health_checks_record_the_outcome(f: Flow) -> None:
    good = await _postmark(f, POSTMARK_TOKEN)
    bad = await _postmark(f, "99999999-2222-3333-4444-555555555555")
    _, checked = await _sweep(f)
    assert checked >= 2
    ok, refused = await _integration(f, good), await _integration(f, bad)
    assert (ok.health_status, ok.error_message) == ("healthy", None)
    assert ok.last_synced_at is not None and ok.last_synced_at > utcnow() - timedelta(minutes=1)
    assert refused.health_status == "degraded"
    assert refused.error_message and "Server Token" in refused.error_message
    sent = [r for r in f.fakes.api_requests if r["provider"] == "postmark"]
    assert {r["headers"]["x-postmark-server-token"] for r in sent} >= {POSTMARK_TOKEN}
    # Checked recently: the next sweep leaves them alone.
    before = len(f.fakes.api_requests)
    await _sweep(f)
    assert len([r for r in f.fakes.api_requests[before:] if r["provider"] == "postmark"]) == 0


async def test_one_runner_at_a_time(f: Flow) -> None:
    _, integration_id = await installed(f, expires_in=timedelta(minutes=1))
    state = f.app.state.state_store
    held = await state.acquire("worker", 60_000)
    assert held is not None
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(f.app.state, f.app.state.credentials, stop,
                                             interval=0.05))
    await asyncio.sleep(0.3)
    assert refreshes(f) == []  # another instance holds the lock
    await state.release("worker", held)
    for _ in range(40):
        await asyncio.sleep(0.05)
        if refreshes(f):
            break
    stop.set()
    await running
    assert len(refreshes(f)) == 1
    async with f.app.state.sessions() as s:
        row = (await s.scalars(select(Integration).where(Integration.id == integration_id))).one()
    assert row.health_status == "healthy"


def test_worker_command_runs_and_stops_on_sigterm(tmp_path: Any) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from broker import migrate
    from broker.crypto import add_key

    db = tmp_path / "worker.db"
    migrate.upgrade(f"sqlite:///{db}")
    keys = tmp_path / "keys.json"
    add_key(keys)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_DATABASE_URL=f"sqlite:///{db}", BROKER_KEYS_FILE=str(keys),
               BROKER_LOG_LEVEL="INFO")
    proc = subprocess.Popen([sys.executable, "-m", "broker", "worker", "--interval", "0.2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
