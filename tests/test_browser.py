"""One install end to end in headless Chromium (Debian's ``chromium``, driven by
Playwright): install URL -> provider consent page (click) -> callback -> the app's return
page shows success; then the v1 list shows the integration active and healthy."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import httpx2

from broker import store
from broker.app import create_app
from broker.crypto import KeyRing
from broker.db import create_engine, sessionmaker
from broker.settings import Settings
from tests.conftest import Database, new_project, service_missing
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import FakeState
from tests.fakes.server import RunningServer
from tests.test_connect import providers_toml

CHROMIUM = "/usr/bin/chromium"
# As the machine's notes say: without these Chromium keeps dialling Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _api_key(database_url: str, project: str) -> str:
    engine = create_engine(database_url)
    try:
        async with sessionmaker(engine)() as session:
            return (await store.create_api_key(session, project,
                                               ("read", "integrations:write")))[1]
    finally:
        await engine.dispose()


def test_install_in_headless_chromium(database: Database, ring: KeyRing, tmp_path: Path,
                                      fakes: tuple[str, FakeState]) -> None:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        service_missing("Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("the playwright package")
    fake_url, _ = fakes
    providers = tmp_path / "providers.toml"
    providers.write_text(providers_toml(fake_url))
    port = _free_port()
    public = f"http://127.0.0.1:{port}"
    settings = Settings(database_url=database.url, public_url=public, providers_file=providers,
                        return_url_allowlist=(fake_url,))
    project = new_project()
    key = asyncio.run(_api_key(database.url, project))
    with RunningServer(create_app(settings, ring=ring), lifespan="on", port=port):
        with httpx2.Client(base_url=public, headers={"X-API-Key": key},
                           trust_env=False) as api:
            r = api.post(f"/v1/projects/{project}/integrations/acme/install-url",
                         json={"return_url": f"{fake_url}/app/done"})
            install_url = r.json()["data"]["install_url"]
            assert install_url.startswith(f"{public}/connect/")
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page()
                    page.goto(install_url)
                    assert page.url.startswith(f"{fake_url}/oauth2/authorize")
                    page.click("#approve")
                    page.wait_for_url(f"{fake_url}/app/done*")
                    assert page.text_content("#result") == "success"
                    assert page.text_content("#provider") == "acme"
                    page.screenshot(path=str(tmp_path / "installed.png"))
                finally:
                    browser.close()
            [item] = api.get(f"/v1/projects/{project}/integrations").json()["data"]
            assert (item["provider"], item["status"], item["health_status"]) == (
                "acme", "active", "healthy")
