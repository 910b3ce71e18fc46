"""A typed Python client for the broker's v1 Integrations API and its internal API.

``BrokerClient`` (sync) and ``AsyncBrokerClient`` (async) have the same methods. Results are
the ``data`` of the broker's ``{"data": ...}`` envelope, as plain dicts (see the README for
their fields). Every failure raises ``BrokerError``: an HTTP error carries the broker's
``status``, ``code``, ``message`` and ``request_id``; a broker that cannot be reached (refused,
timed out, not an HTTP server) raises the subclass ``BrokerConnectionError`` with status 0.

v1 calls authenticate with ``api_key`` (``X-API-Key``) for the client's ``project``; internal
calls with ``service_token`` (``Authorization: Bearer``) and take the project per call. Each
credential is only ever sent to its own API. The client reads no environment variables and
keeps no module-level state; ``transport`` lets tests run it over ``httpx2.ASGITransport``
(async) or ``httpx2.MockTransport``.

    with BrokerClient("http://127.0.0.1:8000", api_key=key, project="prj_demo") as broker:
        for integration in broker.list_integrations():
            print(integration["provider"], integration["status"])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import httpx2

__all__ = [
    "UNSET", "AsyncBrokerClient", "BrokerClient", "BrokerConnectionError", "BrokerError",
    "Unset",
]

DEFAULT_TIMEOUT: Final = 10.0
USER_AGENT: Final = "broker-client/1"

# The shapes the API returns (see README: "The v1 API", "The internal API").
Integration = dict[str, Any]
CatalogEntry = dict[str, Any]
InstallUrl = dict[str, Any]
Credentials = dict[str, Any]
ConnectSession = dict[str, Any]
AuditEvent = dict[str, Any]
Status = Literal["active", "paused", "disconnected"]


class Unset:
    """The type of ``UNSET``: "leave this field alone", as opposed to ``None`` ("clear it")."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = Unset()


class BrokerError(Exception):
    """The broker answered with an error (``status`` 4xx/5xx and its ``code``), or, as
    ``BrokerConnectionError``, could not be reached (``status`` 0)."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None):
        super().__init__(status, code, message, request_id)
        self.status, self.code, self.message, self.request_id = (
            status, code, message, request_id)

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
                f"message={self.message!r}, request_id={self.request_id!r})")


class BrokerConnectionError(BrokerError):
    """No HTTP answer: connection refused, DNS failure, timeout, or a broken response."""

    def __init__(self, code: str, message: str):
        super().__init__(0, code, message, None)
        self.args = (code, message)  # what __init__ takes, so that it pickles


@dataclass(frozen=True)
class _Call:
    """One HTTP request, built the same way for the sync and async clients."""

    method: str
    path: str
    auth: Literal["api_key", "service_token"]
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _seg(value: str) -> str:
    """A path segment: quoted so that no value can walk to another route."""
    if not isinstance(value, str) or not value:
        raise ValueError("project and provider must be non-empty strings")
    return quote(value, safe="")


def _lifecycle_body(status: Status | None, display_name: str | None | Unset,
                    sidebar_enabled: bool | None, settings: Mapping[str, Any] | None,
                    allowed_actions: Sequence[str] | None) -> dict[str, Any]:
    """Only the fields given; ``display_name=None`` is sent (it clears the name)."""
    body: dict[str, Any] = {}
    if status is not None:
        body["status"] = status
    if not isinstance(display_name, Unset):
        body["display_name"] = display_name
    if sidebar_enabled is not None:
        body["sidebar_enabled"] = sidebar_enabled
    if settings is not None:
        body["settings"] = dict(settings)
    if allowed_actions is not None:
        if isinstance(allowed_actions, str):
            raise TypeError("allowed_actions is a sequence of action names, not a string")
        body["allowed_actions"] = list(allowed_actions)
    return body


def _error_from(response: httpx2.Response) -> BrokerError:
    request_id = response.headers.get("x-request-id")
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        request_id = error.get("request_id") or request_id
    except (ValueError, KeyError, TypeError):
        # Not the broker's envelope (a proxy's error page, a different server).
        code = f"http_{response.status_code}"
        message = response.reason_phrase or "HTTP error"
    return BrokerError(response.status_code, code, message, request_id)


def _result(response: httpx2.Response) -> Any:
    if response.status_code >= 400:
        raise _error_from(response)
    try:
        return response.json()["data"]
    except (ValueError, KeyError, TypeError):
        raise BrokerError(response.status_code, "bad_response",
                          "The response is not the broker's JSON envelope; is the URL a "
                          "broker?", response.headers.get("x-request-id")) from None


def _display_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _unreachable(base_url: str, exc: httpx2.RequestError) -> BrokerConnectionError:
    code = "timeout" if isinstance(exc, httpx2.TimeoutException) else "unreachable"
    detail = str(exc) or type(exc).__name__
    return BrokerConnectionError(
        code, f"cannot reach the broker at {_display_url(base_url)}: {detail}")


class _Base:
    """Configuration, headers, and the request for every method (no I/O)."""

    def __init__(self, base_url: str, *, api_key: str | None, service_token: str | None,
                 project: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.project = project
        self._api_key = api_key
        self._service_token = service_token

    def __repr__(self) -> str:  # never the credentials
        return f"{type(self).__name__}({self.base_url!r}, project={self.project!r})"

    def _headers(self, call: _Call) -> dict[str, str]:
        headers = {"Accept": "application/json", **call.headers}
        if call.auth == "api_key":
            if not self._api_key:
                raise ValueError("this call needs the client's api_key")
            headers["X-API-Key"] = self._api_key
        else:
            if not self._service_token:
                raise ValueError("this call needs the client's service_token")
            headers["Authorization"] = f"Bearer {self._service_token}"
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    @staticmethod
    def _content(call: _Call) -> bytes | None:
        return None if call.body is None else json.dumps(call.body).encode()

    def _v1(self, suffix: str = "") -> str:
        if not self.project:
            raise ValueError("v1 calls need the client's project")
        return f"/v1/projects/{_seg(self.project)}/integrations{suffix}"

    # -- the v1 API ---------------------------------------------------------------------------

    def _list_integrations(self) -> _Call:
        return _Call("GET", self._v1(), "api_key")

    def _catalog(self, q: str | None, category: str | None, status: str | None) -> _Call:
        params = {k: v for k, v in (("q", q), ("category", category), ("status", status))
                  if v is not None}
        return _Call("GET", self._v1("/catalog"), "api_key", params)

    def _catalog_entry(self, provider: str) -> _Call:
        return _Call("GET", self._v1(f"/catalog/{_seg(provider)}"), "api_key")

    def _install_url(self, provider: str, return_url: str | None) -> _Call:
        body = None if return_url is None else {"return_url": return_url}
        return _Call("POST", self._v1(f"/{_seg(provider)}/install-url"), "api_key", body=body)

    def _update_lifecycle(self, provider: str, body: dict[str, Any]) -> _Call:
        return _Call("PATCH", self._v1(f"/{_seg(provider)}/lifecycle"), "api_key", body=body)

    def _disconnect(self, provider: str, revoke: bool) -> _Call:
        params = {"revoke": "true"} if revoke else {}
        return _Call("DELETE", self._v1(f"/{_seg(provider)}"), "api_key", params)

    # -- the internal API ---------------------------------------------------------------------

    @staticmethod
    def _internal(project: str, suffix: str) -> str:
        return f"/internal/v1/projects/{_seg(project)}{suffix}"

    @staticmethod
    def _acting(acting_key_id: str | None) -> dict[str, str]:
        return {} if acting_key_id is None else {"X-Acting-Key-Id": acting_key_id}

    def _credentials(self, project: str, provider: str) -> _Call:
        return _Call("GET", self._internal(project, f"/integrations/{_seg(provider)}"
                                                    "/credentials"), "service_token")

    def _create_connect_session(self, project: str, provider: str, return_url: str | None,
                                params: Mapping[str, str] | None) -> _Call:
        body: dict[str, Any] = {"provider": provider}
        if return_url is not None:
            body["return_url"] = return_url
        if params is not None:
            body["params"] = dict(params)
        return _Call("POST", self._internal(project, "/connect-sessions"), "service_token",
                     body=body)

    def _internal_update_lifecycle(self, project: str, provider: str, body: dict[str, Any],
                                   acting_key_id: str | None) -> _Call:
        return _Call("PATCH", self._internal(project, f"/integrations/{_seg(provider)}"
                                                      "/lifecycle"),
                     "service_token", body=body, headers=self._acting(acting_key_id))

    def _internal_disconnect(self, project: str, provider: str, revoke: bool,
                             acting_key_id: str | None) -> _Call:
        return _Call("DELETE", self._internal(project, f"/integrations/{_seg(provider)}"),
                     "service_token", {"revoke": "true"} if revoke else {},
                     headers=self._acting(acting_key_id))

    def _audit(self, project: str, limit: int, before: int | None) -> _Call:
        params = {"limit": str(limit)}
        if before is not None:
            params["before"] = str(before)
        return _Call("GET", self._internal(project, "/audit"), "service_token", params)


class BrokerClient(_Base):
    """Synchronous client; close it (or use it as a context manager)."""

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 service_token: str | None = None, project: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx2.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key=api_key, service_token=service_token,
                         project=project)
        self._http = httpx2.Client(base_url=self.base_url, timeout=timeout,
                                   transport=transport, trust_env=False,
                                   headers={"User-Agent": USER_AGENT})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _send(self, call: _Call) -> Any:
        headers = self._headers(call)
        try:
            response = self._http.request(call.method, call.path, params=call.params,
                                          content=self._content(call), headers=headers)
        except httpx2.RequestError as exc:
            raise _unreachable(self.base_url, exc) from None
        return _result(response)

    # v1 (API key, the client's project)

    def list_integrations(self) -> list[Integration]:
        return self._send(self._list_integrations())

    def catalog(self, q: str | None = None, category: str | None = None,
                status: str | None = None) -> list[CatalogEntry]:
        return self._send(self._catalog(q, category, status))

    def catalog_entry(self, provider: str) -> CatalogEntry:
        return self._send(self._catalog_entry(provider))

    def install_url(self, provider: str, return_url: str | None = None) -> InstallUrl:
        return self._send(self._install_url(provider, return_url))

    def update_lifecycle(self, provider: str, *, status: Status | None = None,
                         display_name: str | None | Unset = UNSET,
                         sidebar_enabled: bool | None = None,
                         settings: Mapping[str, Any] | None = None,
                         allowed_actions: Sequence[str] | None = None) -> Integration:
        body = _lifecycle_body(status, display_name, sidebar_enabled, settings,
                               allowed_actions)
        return self._send(self._update_lifecycle(provider, body))

    def disconnect(self, provider: str, revoke: bool = False) -> Integration:
        return self._send(self._disconnect(provider, revoke))

    # internal (service token, any project)

    def credentials(self, project: str, provider: str) -> Credentials:
        return self._send(self._credentials(project, provider))

    def create_connect_session(self, project: str, provider: str,
                               return_url: str | None = None,
                               params: Mapping[str, str] | None = None) -> ConnectSession:
        return self._send(
            self._create_connect_session(project, provider, return_url, params))

    def internal_update_lifecycle(self, project: str, provider: str, *,
                                  acting_key_id: str | None = None,
                                  status: Status | None = None,
                                  display_name: str | None | Unset = UNSET,
                                  sidebar_enabled: bool | None = None,
                                  settings: Mapping[str, Any] | None = None,
                                  allowed_actions: Sequence[str] | None = None) -> Integration:
        body = _lifecycle_body(status, display_name, sidebar_enabled, settings,
                               allowed_actions)
        return self._send(
            self._internal_update_lifecycle(project, provider, body, acting_key_id))

    def internal_disconnect(self, project: str, provider: str, revoke: bool = False, *,
                            acting_key_id: str | None = None) -> Integration:
        return self._send(
            self._internal_disconnect(project, provider, revoke, acting_key_id))

    def audit(self, project: str, limit: int = 50, before: int | None = None
              ) -> list[AuditEvent]:
        return self._send(self._audit(project, limit, before))


class AsyncBrokerClient(_Base):
    """Asynchronous client; ``await client.aclose()`` (or ``async with``)."""

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 service_token: str | None = None, project: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx2.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key=api_key, service_token=service_token,
                         project=project)
        self._http = httpx2.AsyncClient(base_url=self.base_url, timeout=timeout,
                                        transport=transport, trust_env=False,
                                        headers={"User-Agent": USER_AGENT})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncBrokerClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> Any:
        headers = self._headers(call)
        try:
            response = await self._http.request(call.method, call.path, params=call.params,
                                                content=self._content(call), headers=headers)
        except httpx2.RequestError as exc:
            raise _unreachable(self.base_url, exc) from None
        return _result(response)

    # v1 (API key, the client's project)

    async def list_integrations(self) -> list[Integration]:
        return await self._send(self._list_integrations())

    async def catalog(self, q: str | None = None, category: str | None = None,
                      status: str | None = None) -> list[CatalogEntry]:
        return await self._send(
            self._catalog(q, category, status))

    async def catalog_entry(self, provider: str) -> CatalogEntry:
        return await self._send(self._catalog_entry(provider))

    async def install_url(self, provider: str, return_url: str | None = None) -> InstallUrl:
        return await self._send(
            self._install_url(provider, return_url))

    async def update_lifecycle(self, provider: str, *, status: Status | None = None,
                               display_name: str | None | Unset = UNSET,
                               sidebar_enabled: bool | None = None,
                               settings: Mapping[str, Any] | None = None,
                               allowed_actions: Sequence[str] | None = None) -> Integration:
        body = _lifecycle_body(status, display_name, sidebar_enabled, settings,
                               allowed_actions)
        return await self._send(
            self._update_lifecycle(provider, body))

    async def disconnect(self, provider: str, revoke: bool = False) -> Integration:
        return await self._send(
            self._disconnect(provider, revoke))

    # internal (service token, any project)

    async def credentials(self, project: str, provider: str) -> Credentials:
        return await self._send(
            self._credentials(project, provider))

    async def create_connect_session(self, project: str, provider: str,
                                     return_url: str | None = None,
                                     params: Mapping[str, str] | None = None
                                     ) -> ConnectSession:
        return await self._send(
            self._create_connect_session(project, provider, return_url, params))

    async def internal_update_lifecycle(self, project: str, provider: str, *,
                                        acting_key_id: str | None = None,
                                        status: Status | None = None,
                                        display_name: str | None | Unset = UNSET,
                                        sidebar_enabled: bool | None = None,
                                        settings: Mapping[str, Any] | None = None,
                                        allowed_actions: Sequence[str] | None = None
                                        ) -> Integration:
        body = _lifecycle_body(status, display_name, sidebar_enabled, settings,
                               allowed_actions)
        return await self._send(
            self._internal_update_lifecycle(project, provider, body, acting_key_id))

    async def internal_disconnect(self, project: str, provider: str, revoke: bool = False, *,
                                  acting_key_id: str | None = None) -> Integration:
        return await self._send(
            self._internal_disconnect(project, provider, revoke, acting_key_id))

    async def audit(self, project: str, limit: int = 50, before: int | None = None
                    ) -> list[AuditEvent]:
        return await self._send(
            self._audit(project, limit, before))
