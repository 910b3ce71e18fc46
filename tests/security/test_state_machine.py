"""Checklist section 5: a Hypothesis ``RuleBasedStateMachine`` over random sequences of install,
read and refresh, lifecycle, disconnect (with and without revocation), API-key create and
revoke, cross-tenant attempts and key rotation (add, promote, rewrap, retire), with the
invariants checked after every step:

1. KS-01: nothing the fake provider minted (tokens, codes, PKCE verifiers, states), no API key,
   service token, connect link, Postmark key, OAuth client secret or ring key appears in the
   SQLite file (main file, WAL and shm, byte for byte), as is, hex or base64 at any alignment;
2. AK-05: each project's API key sees exactly its own integrations (list, catalog) and gets
   404 on the other project's, the body a project that does not exist gets;
3. AU-01: the audit table holds exactly the rows the model's successful transitions imply,
   in order, with type, provider, acting key and request id (one per install, refresh,
   lifecycle change, disconnect, API key created or revoked; none for a no-op PATCH, a second
   disconnect or a refused call);
4. every stored credential decrypts with the current ring (the ring file as rolled out) to
   what the model expects, and an OAuth refresh token stored is one the provider still
   honours;
5. an integration's credential row exists iff the model says so: never for a disconnected
   one.

One broker per example, on its own SQLite file (copied from a template migrated once) and
key-ring file, with the in-memory state store; the broker runs on an event loop in a thread
of its own (so that one lifespan spans the whole example) and the fakes over real loopback
HTTP. Installs go through the real browser flow (acme: connect link, authorize, callback;
Postmark: the credential form). Ring and API-key operations go through the CLI's own command
functions (``broker keys add|promote|rewrap|retire``, ``broker api-keys revoke``), and a ring
change is rolled out by restarting the broker, as the README says.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import io
import json
import shutil
import threading
import unicodedata
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx2
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, update

from broker import cli, migrate, store
from broker.app import create_app
from broker.crypto import add_key, blob_key_id
from broker.db import utcnow
from broker.models import AuditEvent, Credential, Integration
from broker.settings import Settings
from tests.conftest import new_project
from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401
from tests.fakes.providers import CLIENT_SECRET, FakeState
from tests.security.sentinels import MARKER, forms
from tests.test_connect import APP, PUBLIC, Flow, providers_toml, query

T = TypeVar("T")

PROVIDERS = ("acme", "postmark")  # an OAuth2 provider with refresh and revocation; an API key
ACTIONS = {"acme": (), "postmark": ("email.send",)}
SIDES = ("A", "B")
SETTINGS = hyp_settings(
    max_examples=25, stateful_step_count=12, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)


# -- the broker on an event loop of its own ---------------------------------------------------

class LoopThread:
    """An event loop running in a thread: the broker's lifespan, its background tasks and the
    test's requests all live on it, while Hypothesis drives the steps from the main thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="broker-loop",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Broker:
    """One broker app (lifespan entered and left in one task) and a browser for it."""

    def __init__(self, fake_url: str, fakes: FakeState) -> None:
        self.fake_url, self.fakes = fake_url, fakes
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    async def _serve(self, settings: Settings, started: asyncio.Future[Flow]) -> None:
        app = create_app(settings)  # the ring comes from settings.keys_file, as in production
        async with LifespanManager(app) as manager:
            async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app),
                                          base_url=PUBLIC) as browser:
                started.set_result(Flow(app, browser, self.fakes, self.fake_url))
                assert self._stop is not None
                await self._stop.wait()

    async def start(self, settings: Settings) -> Flow:
        self._stop = asyncio.Event()
        started: asyncio.Future[Flow] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(settings, started))
        await asyncio.wait({started, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            self._task.result()  # raises what went wrong at start
        return started.result()

    async def stop(self) -> None:
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        await self._task
        self._task = None


@dataclass
class Env:
    """What every example shares: the loop, the fakes, the migrated template database."""

    loop: LoopThread
    fake_url: str
    fakes: FakeState
    template: Path
    providers_file: Path
    root: Path
    examples: int = 0


# -- the model --------------------------------------------------------------------------------

@dataclass
class Model:
    """What one (project, provider) integration should be."""

    status: str = "active"
    has_credential: bool = True
    display_name: str | None = None
    sidebar_enabled: bool = True
    health_status: str | None = "healthy"
    settings: dict[str, Any] = field(default_factory=dict)
    allowed_actions: list[str] = field(default_factory=list)
    secret: str | None = None  # the access token (acme) or server token (postmark) stored
    stale: bool = False  # acme: its token was made to expire; the next hand-out refreshes it


Audit = tuple[str, str | None, str | None, str | None]  # type, provider, actor, request id


def _patch_outcome(current: Model | None, body: dict[str, Any], provider: str
                   ) -> tuple[int, Model | None, bool]:
    """What the broker must answer to a lifecycle PATCH: (status, model after, audited)."""
    if not body:
        return 422, current, False
    if body.get("status", "active") not in ("active", "paused", "disconnected"):
        return 422, current, False
    changes = dict(body)
    if isinstance(name := body.get("display_name"), str):
        name = unicodedata.normalize("NFC", name.strip())
        if not 1 <= len(name) <= 100:
            return 422, current, False
        changes["display_name"] = name
    actions = body.get("allowed_actions")
    if actions is not None and (set(actions) - set(ACTIONS[provider])
                                or len(set(actions)) != len(actions)):
        return 422, current, False
    if current is None:
        return 404, current, False
    target = body.get("status")
    if target in ("active", "paused") and current.status == "disconnected" and (
            not current.has_credential):
        return 409, current, False
    after = copy.deepcopy(current)
    changed = False
    for name in ("status", "display_name", "sidebar_enabled", "allowed_actions"):
        if name in changes and getattr(after, name) != changes[name]:
            setattr(after, name, changes[name])
            changed = True
    if "settings" in changes:
        merged = dict(after.settings)
        for key, value in changes["settings"].items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        if merged != after.settings:
            after.settings, changed = merged, True
    if target == "disconnected" and current.status != "disconnected":
        _wipe(after)
    return 200, after, changed


def _wipe(m: Model) -> None:
    m.status, m.sidebar_enabled, m.health_status = "disconnected", False, None
    m.has_credential, m.secret, m.stale = False, None, False


PATCH_FIELDS = {
    "status": st.sampled_from(["active", "paused", "disconnected", "archived"]),
    "display_name": st.sampled_from([None, "Main", " Main ", "Ops", "   "]),
    "sidebar_enabled": st.booleans(),
    "settings": st.sampled_from([{"theme": "dark"}, {"theme": None}, {"limit": 5}]),
    "allowed_actions": st.sampled_from([[], ["email.send"]]),
}
# One to three fields, or now and then none; refused bodies come from the values ("archived", a
# blank name, an action acme does not declare) and from the empty body.
patch_bodies = st.tuples(
    st.integers(0, 9),
    st.lists(st.sampled_from(sorted(PATCH_FIELDS)), min_size=1, max_size=3, unique=True)
    .flatmap(lambda names: st.fixed_dictionaries({n: PATCH_FIELDS[n] for n in names})),
).map(lambda pair: pair[1] if pair[0] else {})


def _ns(**kwargs: Any) -> argparse.Namespace:
    return argparse.Namespace(**kwargs)


def _quiet(command: Any, settings: Settings, args: argparse.Namespace) -> int:
    """A CLI command function, its output kept out of the test log."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return int(command(settings, args))


# -- the machine ------------------------------------------------------------------------------

class BrokerMachine(RuleBasedStateMachine):
    env: ClassVar[Env]

    def __init__(self) -> None:
        super().__init__()
        env = self.env
        env.examples += 1
        self.dir = env.root / f"example-{env.examples}"
        self.dir.mkdir()
        shutil.copyfile(env.template, self.dir / "broker.db")
        self.ring_path = self.dir / "keys.json"
        add_key(self.ring_path)
        self.settings = Settings(
            database_url=f"sqlite:///{self.dir / 'broker.db'}", public_url=PUBLIC,
            providers_file=env.providers_file, return_url_allowlist=(APP,),
            provider_timeout=3.0, keys_file=self.ring_path)
        self.fakes = env.fakes
        self.fakes.reset()
        self.fakes.auto_approve = True
        self.fakes.mint_marker = MARKER  # every token and code it mints carries the marker
        self.broker = Broker(env.fake_url, env.fakes)
        self.flow = self.run(self.broker.start(self.settings))
        self.step = 0
        self.project = {side: new_project() for side in SIDES}
        self.model: dict[tuple[str, str], Model] = {}
        self.audit: dict[str, list[Audit]] = {side: [] for side in SIDES}
        self.keys: dict[str, list[tuple[str, str, bool]]] = {side: [] for side in SIDES}
        self.secrets: dict[str, str | bytes] = {"OAuth client secret": CLIENT_SECRET}
        self._forms: dict[str, set[bytes]] = {}
        self._ring_materials()
        for side in SIDES:
            self.run(self._create_key(side))
        self.service_token = self.run(self._service_token())
        self.secrets["service token"] = self.service_token

    # -- plumbing ---------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.env.loop.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self.broker.stop())
            self._scan_database()  # once more with every write flushed at shutdown
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _request_id(self, what: str) -> str:
        self.step += 1
        return f"sm-{self.step}-{what}"

    def _target(self, side: str, provider: str, installed: int) -> tuple[str, str]:
        """The drawn (side, provider), or mostly one that exists: a step on a provider never
        installed only proves the 404 again."""
        pairs = sorted(self.model)
        if not installed or not pairs:
            return side, provider
        return pairs[(installed + 2 * SIDES.index(side) + PROVIDERS.index(provider))
                     % len(pairs)]

    def _live_key(self, side: str) -> tuple[str, str] | None:
        live = [(key_id, secret) for key_id, secret, ok in self.keys[side] if ok]
        return live[-1] if live else None

    async def _restart(self) -> None:
        await self.broker.stop()
        self.flow = await self.broker.start(self.settings)

    def _ring_materials(self) -> None:
        for entry in json.loads(self.ring_path.read_text())["keys"]:
            self.secrets[f"ring key {entry['id']}"] = base64.b64decode(entry["secret"])

    def _note_minted(self) -> None:
        """Everything the fake provider minted or was sent that must stay secret."""
        f = self.fakes
        for token in (*f.access_tokens, *f.refresh_tokens, *f.codes):
            self.secrets[f"minted {token}"] = token
        for request in f.token_requests:
            if verifier := request["body"].get("code_verifier"):
                self.secrets[f"PKCE verifier {verifier[:4]}"] = verifier
        for q in f.authorize_requests:
            if state := q.get("state"):
                self.secrets[f"OAuth state {state[:4]}"] = state

    async def _service_token(self) -> str:
        async with self.flow.app.state.sessions() as s:
            return (await store.create_service_token(s, "main-api"))[1]

    async def _create_key(self, side: str) -> None:
        async with self.flow.app.state.sessions() as s:
            key_id, secret = await store.create_api_key(
                s, self.project[side], ("read", "integrations:write"))
        self.keys[side].append((key_id, secret, True))
        self.secrets[f"API key {key_id}"] = secret
        self.secrets[f"API key {key_id} (secret part)"] = secret[4 + 12:4 + 12 + 32]
        self.audit[side].append(("api_key.created", None, None, None))

    # -- install ----------------------------------------------------------------------------

    async def _install_url(self, side: str, provider: str, via: str) -> str:
        key = self._live_key(side)
        if via == "v1" and key is not None:
            r = await self.flow.browser.post(
                f"/v1/projects/{self.project[side]}/integrations/{provider}/install-url",
                json={"return_url": f"{APP}/done"}, headers={"X-API-Key": key[1]})
            assert r.status_code == 200, r.text
            url = str(r.json()["data"]["install_url"])
        else:
            r = await self.flow.browser.post(
                f"/internal/v1/projects/{self.project[side]}/connect-sessions",
                json={"provider": provider, "return_url": f"{APP}/done"},
                headers={"Authorization": f"Bearer {self.service_token}"})
            assert r.status_code == 201, r.text
            url = str(r.json()["data"]["connect_url"])
        self.secrets[f"connect link {url[-6:]}"] = url.rsplit("/", 1)[1]
        return url

    async def _install(self, side: str, provider: str, via: str) -> None:
        url = await self._install_url(side, provider, via)
        request_id = self._request_id("install")
        done = f"{APP}/done?status=success&provider={provider}"
        if provider == "acme":
            start = await self.flow.get(url)
            assert start.status_code == 302, start.text
            back = await self.flow.get(start.headers["location"])
            assert back.status_code == 302, back.text
            callback = back.headers["location"]
            assert "code" in query(callback)
            end = await self.flow.get(callback, headers={"X-Request-Id": request_id})
            assert end.status_code == 302 and end.headers["location"] == done, end.text
            secret = list(self.fakes.access_tokens)[-1]  # the one the exchange just minted
        else:
            secret = str(uuid.uuid4())
            self.fakes.postmark_tokens.add(secret)
            self.secrets[f"Postmark token {secret[:4]}"] = secret
            page = await self.flow.get(url)
            assert page.status_code == 200, page.text
            action = page.text.split("action='", 1)[1].split("'", 1)[0]
            end = await self.flow.browser.post(action, data={"server_token": secret},
                                               headers={"X-Request-Id": request_id})
            assert end.status_code == 302 and end.headers["location"] == done, end.text
        m = self.model.get((side, provider))
        self.model[(side, provider)] = Model(
            display_name=m.display_name if m else None,
            settings=m.settings if m else {},
            allowed_actions=m.allowed_actions if m else [], secret=secret)
        self.audit[side].append(("integration.installed", provider, None, request_id))
        self._note_minted()

    @initialize(provider_a=st.sampled_from(PROVIDERS), provider_b=st.sampled_from(PROVIDERS))
    def install_one_each(self, provider_a: str, provider_b: str) -> None:
        self.run(self._install("A", provider_a, "v1"))
        self.run(self._install("B", provider_b, "internal"))

    @rule(side=st.sampled_from(SIDES), provider=st.sampled_from(PROVIDERS),
          via=st.sampled_from(["v1", "internal"]))
    def install(self, side: str, provider: str, via: str) -> None:
        self.run(self._install(side, provider, via))

    # -- hand-out and refresh ---------------------------------------------------------------

    async def _read(self, side: str, provider: str) -> None:
        r = await self.flow.browser.get(
            f"/internal/v1/projects/{self.project[side]}/integrations/{provider}/credentials",
            headers={"Authorization": f"Bearer {self.service_token}"})
        m = self.model.get((side, provider))
        if m is None:
            assert r.status_code == 404, r.text
            return
        if m.status != "active":
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == (
                "integration_paused" if m.status == "paused" else "integration_disconnected")
            return
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert "refresh_token" not in data
        if provider == "postmark":
            assert data["api_key"] == m.secret
            return
        if m.stale:
            assert data["access_token"] != m.secret, "an expiring token was handed out"
            assert data["access_token"] in self.fakes.access_tokens
            m.secret, m.stale = data["access_token"], False
            self.audit[side].append(("credential.refreshed", provider, None, None))
            self._note_minted()
        else:
            assert data["access_token"] == m.secret

    @rule(side=st.sampled_from(SIDES), provider=st.sampled_from(PROVIDERS),
          installed=st.integers(0, 3))
    def read_credentials(self, side: str, provider: str, installed: int) -> None:
        side, provider = self._target(side, provider, installed)
        self.run(self._read(side, provider))

    async def _expire(self, side: str) -> None:
        project = self.project[side]
        async with self.flow.app.state.sessions() as s:
            row = await store.get_integration(s, project, "acme")
            assert row is not None
            await s.execute(update(Credential).where(Credential.integration_id == row.id)
                            .values(expires_at=utcnow() + timedelta(minutes=1)))
            await s.commit()
        # The hand-out cache (1 s) drops an entry on a change message, as from pub/sub.
        self.flow.app.state.credentials.receive(json.dumps({"integrations": [[project,
                                                                              "acme"]]}))

    @precondition(lambda self: any(m.has_credential for (_, p), m in self.model.items()
                                   if p == "acme"))
    @rule(side=st.sampled_from(SIDES), then_read=st.booleans())
    def token_expires(self, side: str, then_read: bool) -> None:
        m = self.model.get((side, "acme"))
        if m is None or not m.has_credential:
            side = "B" if side == "A" else "A"
            m = self.model[(side, "acme")]
        self.run(self._expire(side))
        m.stale = True
        if then_read:
            self.run(self._read(side, "acme"))

    # -- lifecycle and disconnect -----------------------------------------------------------

    def _caller(self, side: str, via: str) -> tuple[str, dict[str, str], str | None]:
        """(path prefix, headers, the actor the audit row must name)."""
        project = self.project[side]
        key = self._live_key(side)
        if via == "v1" and key is not None:
            return (f"/v1/projects/{project}/integrations", {"X-API-Key": key[1]}, key[0])
        acting = self.keys[side][0][0]
        return (f"/internal/v1/projects/{project}/integrations",
                {"Authorization": f"Bearer {self.service_token}", "X-Acting-Key-Id": acting},
                acting)

    async def _patch(self, side: str, provider: str, body: dict[str, Any], via: str) -> None:
        base, headers, actor = self._caller(side, via)
        request_id = self._request_id("patch")
        r = await self.flow.browser.patch(f"{base}/{provider}/lifecycle", json=body,
                                          headers={**headers, "X-Request-Id": request_id})
        status, after, audited = _patch_outcome(self.model.get((side, provider)), body,
                                                provider)
        assert r.status_code == status, (body, r.text)
        if status != 200:
            return
        assert after is not None
        self.model[(side, provider)] = after
        data = r.json()["data"]
        assert (data["status"], data["display_name"], data["sidebar_enabled"],
                data["settings"], data["allowed_actions"]) == (
            after.status, after.display_name, after.sidebar_enabled, after.settings,
            after.allowed_actions), (body, data)
        if audited:
            self.audit[side].append(("integration.lifecycle.updated", provider, actor,
                                     request_id))

    @rule(side=st.sampled_from(SIDES), provider=st.sampled_from(PROVIDERS), body=patch_bodies,
          via=st.sampled_from(["v1", "internal"]), installed=st.integers(0, 3))
    def patch_lifecycle(self, side: str, provider: str, body: dict[str, Any], via: str,
                        installed: int) -> None:
        side, provider = self._target(side, provider, installed)
        self.run(self._patch(side, provider, body, via))

    async def _disconnect(self, side: str, provider: str, revoke: bool, via: str) -> None:
        base, headers, actor = self._caller(side, via)
        request_id = self._request_id("delete")
        revocations = len(self.fakes.revoke_requests)
        r = await self.flow.browser.delete(
            f"{base}/{provider}{'?revoke=true' if revoke else ''}",
            headers={**headers, "X-Request-Id": request_id})
        m = self.model.get((side, provider))
        if m is None:
            assert r.status_code == 404, r.text
            assert len(self.fakes.revoke_requests) == revocations
            return
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert (data["status"], data["sidebar_enabled"], data["health_status"]) == (
            "disconnected", False, None)
        if revoke:
            if provider == "postmark":
                expected: tuple[list[str], str | None] = ([], "unsupported")
            elif m.has_credential:
                expected = (["refresh_token"], None)
            else:
                expected = ([], "no_credential")
            assert (data["revoked"], data["revocation_error"]) == expected, data
            assert len(self.fakes.revoke_requests) == revocations + len(expected[0])
        else:
            assert "revoked" not in data and len(self.fakes.revoke_requests) == revocations
        changed = (m.status, m.sidebar_enabled, m.health_status) != (
            "disconnected", False, None) or m.has_credential
        _wipe(m)
        if changed:
            self.audit[side].append(("integration.disconnected", provider, actor, request_id))

    @rule(side=st.sampled_from(SIDES), provider=st.sampled_from(PROVIDERS),
          revoke=st.booleans(), via=st.sampled_from(["v1", "internal"]),
          installed=st.integers(0, 3))
    def disconnect(self, side: str, provider: str, revoke: bool, via: str,
                   installed: int) -> None:
        side, provider = self._target(side, provider, installed)
        self.run(self._disconnect(side, provider, revoke, via))

    # -- cross-tenant attempts (AK-05) ------------------------------------------------------

    async def _cross(self, side: str, provider: str, action: str) -> None:
        key = self._live_key(side)
        assert key is not None
        other = self.project["B" if side == "A" else "A"]
        nowhere = f"prj_none_{self.step}"
        headers = {"X-API-Key": key[1]}

        async def attempt(project: str) -> httpx2.Response:
            base = f"/v1/projects/{project}/integrations"
            if action == "patch":
                return await self.flow.browser.patch(
                    f"{base}/{provider}/lifecycle", headers=headers,
                    json={"status": "paused", "display_name": "taken over"})
            if action == "delete":
                return await self.flow.browser.delete(f"{base}/{provider}?revoke=true",
                                                      headers=headers)
            if action == "install-url":
                return await self.flow.browser.post(f"{base}/{provider}/install-url",
                                                    headers=headers)
            if action == "entry":
                return await self.flow.browser.get(f"{base}/catalog/{provider}",
                                                   headers=headers)
            return await self.flow.browser.get(base, headers=headers)

        revocations = len(self.fakes.revoke_requests)
        theirs, missing = await attempt(other), await attempt(nowhere)
        assert theirs.status_code == missing.status_code == 404, (action, theirs.text)
        assert {k: v for k, v in theirs.json()["error"].items() if k != "request_id"} == {
            k: v for k, v in missing.json()["error"].items() if k != "request_id"}
        assert len(self.fakes.revoke_requests) == revocations
        self.step += 1

    @precondition(lambda self: all(self._live_key(side) for side in SIDES))
    @rule(side=st.sampled_from(SIDES), provider=st.sampled_from(PROVIDERS),
          action=st.sampled_from(["patch", "delete", "install-url", "entry", "list"]))
    def cross_tenant_attempt(self, side: str, provider: str, action: str) -> None:
        self.run(self._cross(side, provider, action))

    # -- API keys ---------------------------------------------------------------------------

    @rule(side=st.sampled_from(SIDES), revoke=st.booleans(), index=st.integers(0, 7))
    def api_key(self, side: str, revoke: bool, index: int) -> None:
        """Create a key, or revoke one (``broker api-keys revoke``; a second revocation of
        the same key is a no-op without an audit row)."""
        if not revoke:
            self.run(self._create_key(side))
            return
        keys = self.keys[side]
        i = index % len(keys)
        key_id, secret, live = keys[i]
        assert _quiet(cli.cmd_api_keys_revoke, self.settings, _ns(id=key_id)) == 0
        if live:
            keys[i] = (key_id, secret, False)
            self.audit[side].append(("api_key.revoked", None, None, None))
        r = self.run(self.flow.browser.get(f"/v1/projects/{self.project[side]}/integrations",
                                           headers={"X-API-Key": secret}))
        assert r.status_code == 401, r.text

    # -- key rotation -----------------------------------------------------------------------

    def _ring(self) -> tuple[str, list[str]]:
        doc = json.loads(self.ring_path.read_text())
        return doc["primary"], [k["id"] for k in doc["keys"]]

    async def _key_ids(self) -> list[str]:
        async with self.flow.app.state.sessions() as s:
            return list(await s.scalars(select(Credential.key_id)))

    def _rotation_stage(self, stage: str, index: int, reencrypt: bool) -> None:
        ring = str(self.ring_path)
        primary, ids = self._ring()
        others = [k for k in ids if k != primary]
        if stage in ("promote", "retire") and not others:
            stage = "add"
        if stage == "add":
            assert _quiet(cli.cmd_keys_add, self.settings, _ns(file=ring)) == 0
            self._ring_materials()
            self.run(self._restart())
        elif stage == "promote":
            chosen = others[index % len(others)]
            assert _quiet(cli.cmd_keys_promote, self.settings, _ns(file=ring, id=chosen)) == 0
            self.run(self._restart())
        elif stage == "rewrap":
            args = _ns(batch=500, reencrypt=reencrypt, quiet=True, json=True)
            assert _quiet(cli.cmd_keys_rewrap, self.settings, args) == 0
            assert set(self.run(self._key_ids())) <= {primary}
        else:
            chosen = others[index % len(others)]
            in_use = chosen in self.run(self._key_ids())
            rc = _quiet(cli.cmd_keys_retire, self.settings, _ns(file=ring, id=chosen))
            assert (rc != 0) is in_use, (chosen, in_use, rc)  # refused while rows use it
            assert (chosen in self._ring()[1]) is in_use
            if not in_use:
                self.run(self._restart())

    @rule(stage=st.sampled_from(["add", "promote", "rewrap", "retire", "runbook"]),
          index=st.integers(0, 7), reencrypt=st.booleans())
    def rotate_ring(self, stage: str, index: int, reencrypt: bool) -> None:
        """One step of "Rotating keys" (``broker keys add``, ``promote``, ``rewrap
        [--reencrypt]``, ``retire``), or the whole runbook at once: add, promote, rewrap,
        retire the old primary. A changed ring is rolled out by a restart."""
        if stage != "runbook":
            self._rotation_stage(stage, index, reencrypt)
            return
        old, _ = self._ring()
        self._rotation_stage("add", 0, False)
        _, ids = self._ring()
        self._rotation_stage("promote", ids.index(ids[-1]) - 1, False)
        assert self._ring()[0] == ids[-1]
        self._rotation_stage("rewrap", 0, False)
        primary, ids = self._ring()
        self._rotation_stage("retire", [k for k in ids if k != primary].index(old), False)
        assert old not in self._ring()[1]

    # -- invariants -------------------------------------------------------------------------

    def _scan_database(self) -> None:
        """Invariant 1 (KS-01): the database file, byte for byte."""
        dump = b"".join(p.read_bytes() for p in sorted(self.dir.glob("broker.db*")))
        wanted = dict(self.secrets)
        wanted["the fake provider's marker (in every token and code it mints)"] = MARKER
        for name, secret in wanted.items():
            if name not in self._forms:
                self._forms[name] = {f.encode() for f in forms(secret)}
                if isinstance(secret, bytes):
                    self._forms[name].add(secret)
            found = [f for f in self._forms[name] if f in dump]
            assert not found, f"{name} is in the database file in clear ({found[0][:6]!r}...)"

    @invariant()
    def no_secret_in_the_database(self) -> None:
        self._note_minted()
        self._scan_database()

    async def _isolation(self) -> None:
        async with self.flow.app.state.sessions() as s:
            ids = {side: set(await s.scalars(select(Integration.id).where(
                Integration.project_id == self.project[side]))) for side in SIDES}
        for side in SIDES:
            key = self._live_key(side)
            if key is None:
                continue
            other = "B" if side == "A" else "A"
            headers = {"X-API-Key": key[1]}
            base = f"/v1/projects/{self.project[side]}/integrations"
            listed = await self.flow.browser.get(base, headers=headers)
            assert listed.status_code == 200, listed.text
            rows = listed.json()["data"]
            assert {row["id"] for row in rows} == ids[side]
            expected = {p: m for (s_, p), m in self.model.items() if s_ == side}
            assert {row["provider"]: (row["status"], row["display_name"],
                                      row["sidebar_enabled"], row["health_status"],
                                      row["settings"], row["allowed_actions"])
                    for row in rows} == {
                p: (m.status, m.display_name, m.sidebar_enabled, m.health_status, m.settings,
                    m.allowed_actions) for p, m in expected.items()}
            catalog = await self.flow.browser.get(f"{base}/catalog", headers=headers)
            assert catalog.status_code == 200, catalog.text
            entries = {e["provider"]: e for e in catalog.json()["data"]}
            assert {e["integration_id"] for e in entries.values()} - {None} == ids[side]
            for provider in PROVIDERS:
                m = expected.get(provider)
                assert entries[provider]["status"] == (m.status if m else "available")
            theirs = f"/v1/projects/{self.project[other]}/integrations"
            for path in (theirs, f"{theirs}/catalog", f"{theirs}/catalog/acme"):
                r = await self.flow.browser.get(path, headers=headers)
                assert r.status_code == 404, (path, r.text)
                assert not any(i in r.text for i in ids[other])

    @invariant()
    def tenants_see_only_their_own(self) -> None:
        self.run(self._isolation())

    async def _audit_rows(self) -> list[AuditEvent]:
        async with self.flow.app.state.sessions() as s:
            return list(await s.scalars(select(AuditEvent).order_by(AuditEvent.id)))

    @invariant()
    def one_audit_row_per_transition(self) -> None:
        rows = self.run(self._audit_rows())
        by_project = {self.project[side]: side for side in SIDES}
        assert {row.project_id for row in rows} <= set(by_project), "a row for another project"
        for side in SIDES:
            got = [(r.type, r.provider, r.actor_key_id, r.request_id) for r in rows
                   if r.project_id == self.project[side]]
            assert got == self.audit[side], f"project {side}: {got} != {self.audit[side]}"

    async def _credentials(self) -> list[tuple[Integration, Credential | None]]:
        async with self.flow.app.state.sessions() as s:
            rows = await s.execute(select(Integration, Credential).outerjoin(
                Credential, Credential.integration_id == Integration.id))
            return [(i, c) for i, c in rows.all()]

    @invariant()
    def credentials_match_the_model_and_open_with_the_ring(self) -> None:
        ring = self.settings.ring()  # the ring file as rolled out
        assert ring.ids == self.flow.app.state.ring.ids
        sides = {self.project[side]: side for side in SIDES}
        seen = set()
        for integration, credential in self.run(self._credentials()):
            side = sides[integration.project_id]
            m = self.model[(side, integration.provider)]
            seen.add((side, integration.provider))
            assert integration.status == m.status
            # Invariant 5: a disconnected integration has no credential row.
            assert (credential is not None) is m.has_credential, (integration.status, m)
            if credential is None:
                continue
            # Invariant 4: it opens with the current ring, to what the model says.
            assert credential.key_id in ring.ids
            # The column `keys status`, `retire` and `rewrap` go by names the key that really
            # wraps the data key, or retiring a key "no row uses" would lose rows.
            assert blob_key_id(credential.data_key_ct) == credential.key_id
            opened = store.open_credential(ring, integration, credential)
            if integration.provider == "acme":
                assert opened.access_token == m.secret
                assert opened.refresh_token in self.fakes.refresh_tokens, "a dead grant"
            else:
                assert dict(opened.fields) == {"server_token": m.secret}
        assert seen == set(self.model)


def test_au_01_random_operation_sequences_keep_the_invariants(
        tmp_path: Path, fakes: tuple[str, FakeState]) -> None:
    fake_url, state = fakes
    template = tmp_path / "template.db"
    migrate.upgrade(f"sqlite:///{template}")
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(providers_toml(fake_url))
    loop = LoopThread()
    try:
        BrokerMachine.env = Env(loop, fake_url, state, template, providers_file, tmp_path)
        run_state_machine_as_test(BrokerMachine, settings=SETTINGS)
    finally:
        loop.close()

