"""/metrics: Prometheus text with route templates (never raw paths), installs, refreshes,
cache sources; no secret in it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from broker.crypto import KeyRing
from broker.settings import Settings
from tests.conftest import new_project
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import FakeState
from tests.test_connect import Flow, _approved_callback, flow_settings, make_flow  # noqa: F401
from tests.test_credentials import installed, service_token

pytestmark = pytest.mark.anyio


@pytest.fixture
async def f(flow_settings: Settings, ring: KeyRing,  # noqa: F811
            fakes: tuple[str, FakeState]) -> AsyncIterator[Flow]:
    async for value in make_flow(flow_settings, ring, fakes):
        yield value


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{wanted}}}")


async def test_metrics_count_what_happened(f: Flow) -> None:
    await f.get(await _approved_callback(f, new_project()))
    project, _ = await installed(f, expires_in=timedelta(seconds=-1))
    token = await service_token(f)
    url = f"/internal/v1/projects/{project}/integrations/acme/credentials"
    for _ in range(3):
        assert (await f.browser.get(url, headers={"Authorization": f"Bearer {token}"})
                ).status_code == 200
    text = (await f.browser.get("/metrics")).text
    route = "/internal/v1/projects/{projectId}/integrations/{provider}/credentials"
    assert sample(text, "broker_http_requests_total", route=route, method="GET",
                  status="200") == 3
    assert sample(text, "broker_installs_total", provider="acme", outcome="installed") == 1
    assert sample(text, "broker_refreshes_total", provider="acme", outcome="success") == 1
    assert sample(text, "broker_handout_cache_total", source="cache") >= 1
    assert sample(text, "broker_provider_call_seconds_count", provider="acme",
                  call="exchange") == 1
    assert project not in text and token not in text and "rt-seed" not in text
