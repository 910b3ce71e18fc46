"""The provider plugin API: everything a provider module (built-in or third-party) uses.

A provider is one frozen, keyword-only dataclass instance, registered under the
``broker.providers`` entry-point group with the slug as the entry-point name::

    [project.entry-points."broker.providers"]
    acme = "broker_provider_acme:provider"

Four kinds exist, by how a credential is obtained:

- :class:`OAuth2Provider`: the browser goes through the provider's consent (``oauth``).
- :class:`ApiKeyProvider`: a form collects an API key or token (``api_key``).
- :class:`BasicAuthProvider`: a form collects a username and password (``basic``).
- :class:`WebhookProvider`: a form collects an incoming-webhook URL (``webhook``).

Common fields (every kind):

``slug``
    kebab-case, unique and permanent: the entry-point name, the stored value and the URL
    segment. Never rename one.
``name``, ``description``, ``category``, ``docs_url``
    what the catalog shows; ``docs_url`` is the provider's auth documentation.
``fields``
    inputs the connect page asks for (see :class:`Field`): a shop domain before an OAuth
    redirect, an API key, a webhook URL. Values fill ``{placeholder}`` s in URLs and templates,
    and only after matching the field's ``pattern``.
``actions``
    the agent actions the integration can be allowed to perform (see :class:`Action`);
    ``allowed_actions`` on an integration is checked against these names.
``health_check``
    a cheap "who am I" :class:`Request` run with the stored credential.
``api_base_url``
    the base of the provider's API for hooks that call it (``Connected.http``).

URLs must be https; loopback hosts (``127.0.0.1``, ``localhost``) may use http so that local
fakes can stand in for a provider.
"""

from __future__ import annotations

import re
import string
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

__all__ = [
    "Action",
    "ApiKeyProvider",
    "Basic",
    "BasicAuthProvider",
    "Callback",
    "CallbackError",
    "Connected",
    "Field",
    "Header",
    "Hooks",
    "OAuth2Provider",
    "Provider",
    "ProviderError",
    "Request",
    "SetupType",
    "TokenError",
    "TokenResponse",
    "WebhookProvider",
    "standard_token",
]

SetupType = Literal["oauth", "api_key", "basic", "webhook"]

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
ACTION_NAME = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ProviderError(ValueError):
    """A provider declaration is invalid; the message names the provider and the field."""


@dataclass(frozen=True, kw_only=True)
class Field:
    """An input collected on the connect page.

    ``pattern`` is matched against the whole value (``re.fullmatch``); a field that fills a
    URL placeholder must have one, so that no free host ever reaches a URL. ``secret`` values
    are encrypted at rest and never shown back; non-secret values are kept in the
    integration's metadata. ``choices`` restricts the value to a fixed set.
    """

    name: str
    label: str
    description: str = ""
    pattern: str | None = None
    example: str | None = None
    secret: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Action:
    """An agent action the provider supports, named ``resource.verb`` (``refunds.create``)."""

    name: str
    description: str


@dataclass(frozen=True, kw_only=True)
class Request:
    """A declarative HTTP request: a credential check or a health check.

    ``url`` may hold ``{field}`` placeholders. ``json`` is sent as the body, ``headers`` as
    static headers (an API version, an ``Accept``). The request succeeds when the status is
    in ``expect_status`` and, when ``expect_json`` is given, the response JSON holds each of
    its top-level values (Slack answers errors with HTTP 200 and ``"ok": false``).
    """

    url: str
    method: Literal["GET", "POST"] = "GET"
    json: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    expect_status: tuple[int, ...] = (200,)
    expect_json: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Header:
    """Send a credential as a header: ``Header("X-Postmark-Server-Token", "{api_key}")``."""

    name: str
    template: str


@dataclass(frozen=True, kw_only=True)
class Basic:
    """Send a credential as HTTP Basic auth, each part a template over the fields."""

    username: str
    password: str


class CallbackError(Exception):
    """Raised by ``validate_callback`` to refuse a callback; the message is shown to the
    person installing and must hold no secret."""


class TokenError(Exception):
    """Raised by ``parse_token`` when a token response is unusable; ``code`` is the
    provider's error code when it gave one (``invalid_grant``)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, kw_only=True)
class TokenResponse:
    """A token endpoint's answer, normalised. ``raw`` is the parsed JSON, from which
    ``token_metadata`` paths are read."""

    access_token: str = field(repr=False)
    token_type: str = "bearer"
    refresh_token: str | None = field(default=None, repr=False)
    expires_in: int | None = None
    scopes: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


def seconds(value: Any) -> int | None:
    """A positive lifetime in seconds, or None. Providers send ints, floats and strings, and
    some send 0 for "does not expire"."""
    if isinstance(value, bool):
        return None
    try:
        found = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return found if found > 0 else None


def standard_token(raw: Mapping[str, Any], separator: str = " ") -> TokenResponse:
    """RFC 6749 section 5.1: the default ``parse_token``."""
    if "error" in raw:
        raise TokenError(f"the provider refused: {str(raw['error'])[:100]}", str(raw["error"]))
    access = raw.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenError("the token response has no access_token")
    token_type = raw.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenError("the token response is not a bearer token")
    refresh = raw.get("refresh_token")
    scope = raw.get("scope", "")
    return TokenResponse(
        access_token=access,
        token_type="bearer",
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_in=seconds(raw.get("expires_in")),
        scopes=tuple(s for s in re.split(r"[ ,]+", scope) if s) if isinstance(scope, str)
        else (),
        raw=raw,
    )


@dataclass(frozen=True, kw_only=True)
class Callback:
    """What ``validate_callback`` sees: the callback's query exactly as received (repeated
    keys kept), the app's client secret, and the inputs pinned when the flow started.
    ``previous_secrets`` are secrets still accepted while the provider's console rotates
    the app's secret: a signature under any of them is genuine."""

    query: Sequence[tuple[str, str]] = field(repr=False)
    client_secret: str = field(repr=False)
    inputs: Mapping[str, str]
    previous_secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.client_secret, *self.previous_secrets)


@dataclass(frozen=True, kw_only=True)
class Connected:
    """What ``after_connect`` sees once the code is exchanged: the new tokens, the callback
    query as received, the pinned inputs, and ``http``, an ``httpx2.AsyncClient`` based on
    the provider's ``api_base_url`` that presents the access token as ``token_header`` says
    and follows no redirects."""

    token: TokenResponse
    query: Sequence[tuple[str, str]] = field(repr=False)
    inputs: Mapping[str, str]
    http: Any = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class Hooks:
    """The closed set of hooks, for quirks that data cannot express. All optional.

    ``prepare_authorize(params, inputs) -> params``
        adjust the authorize request's query (Slack's ``user_scope``).
    ``validate_callback(callback) -> None``
        check the provider's callback before any token request; raise
        :class:`CallbackError` to refuse (Shopify's HMAC).
    ``parse_token(raw) -> TokenResponse``
        normalise a non-standard token response, raising :class:`TokenError` for an
        error hidden in a 200 (Slack's ``ok: false``). The default is
        :func:`standard_token`.
    ``async after_connect(connected) -> metadata``
        confirm or enrich an install with the new token before anything is stored; raise
        :class:`CallbackError` to refuse it (a GitHub App ``installation_id`` the user
        cannot see). The returned mapping is added to the integration's metadata.

    A new hook name is a change of this module, with its documentation and tests.
    """

    prepare_authorize: Callable[[dict[str, str], Mapping[str, str]], dict[str, str]] | None = None
    validate_callback: Callable[[Callback], None] | None = None
    parse_token: Callable[[Mapping[str, Any]], TokenResponse] | None = None
    after_connect: Callable[[Connected], Awaitable[Mapping[str, Any]]] | None = None


@dataclass(frozen=True, kw_only=True)
class Provider:
    setup_type: ClassVar[SetupType]

    slug: str
    name: str
    category: str
    description: str
    docs_url: str
    fields: tuple[Field, ...] = ()
    actions: tuple[Action, ...] = ()
    health_check: Request | None = None
    api_base_url: str | None = None

    def urls(self) -> dict[str, str]:
        """Every URL the declaration holds, by field name, for validation and display."""
        found = {"docs_url": self.docs_url}
        if self.api_base_url:
            found["api_base_url"] = self.api_base_url
        if self.health_check:
            found["health_check"] = self.health_check.url
        return found

    def validate(self) -> None:
        """Raise :class:`ProviderError` unless the declaration is usable."""
        where = f"provider {self.slug!r}"
        if getattr(type(self), "setup_type", None) not in ("oauth", "api_key", "basic",
                                                            "webhook"):
            raise ProviderError(f"{where}: declare it with OAuth2Provider, ApiKeyProvider, "
                                "BasicAuthProvider or WebhookProvider")
        if not SLUG.fullmatch(self.slug):
            raise ProviderError(f"{where}: slug must be kebab-case")
        for label, value in (("name", self.name), ("category", self.category),
                             ("description", self.description)):
            if not value.strip():
                raise ProviderError(f"{where}: {label} is empty")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ProviderError(f"{where}: duplicate field names")
        for f in self.fields:
            if not FIELD_NAME.match(f.name):
                raise ProviderError(f"{where}: field name {f.name!r} is not snake_case")
            if f.pattern is not None:
                try:
                    re.compile(f.pattern)
                except re.error as exc:
                    raise ProviderError(f"{where}: field {f.name}: bad pattern: {exc}") from None
        actions = [a.name for a in self.actions]
        if len(set(actions)) != len(actions):
            raise ProviderError(f"{where}: duplicate action names")
        for name in actions:
            if not ACTION_NAME.match(name):
                raise ProviderError(f"{where}: action {name!r} must look like resource.verb")
        constrained = {f.name for f in self.fields if f.pattern or f.choices}
        for label, url in self.urls().items():
            check_url(url, f"{where}: {label}")
            for placeholder in placeholders(url):
                if placeholder not in constrained:
                    raise ProviderError(
                        f"{where}: {label} uses {{{placeholder}}}, which is not a field with "
                        "a pattern or choices"
                    )


@dataclass(frozen=True, kw_only=True)
class OAuth2Provider(Provider):
    """An OAuth 2.0 authorization-code provider.

    ``authorize_url``, ``token_url``, ``revoke_url``
        endpoints; ``revoke_url`` is optional. The token endpoint also refreshes.
    ``revoke_style``
        ``rfc7009``: POST ``token`` and ``token_type_hint`` with client authentication;
        ``bearer``: POST with the token to revoke as the bearer credential (Slack).
    ``scopes``, ``scope_separator``
        the scopes requested by default and how they are joined (``" "`` or ``","``).
    ``pkce``
        send an S256 PKCE challenge.
    ``client_auth_method``
        ``client_secret_basic`` or ``client_secret_post`` (RFC 7591 names).
    ``token_request_format``
        ``form`` (RFC 6749) or ``json``.
    ``authorize_params``, ``token_params``
        static extra parameters for those requests.
    ``token_metadata``
        dotted paths copied from the token response into the integration's metadata
        (``team.id``, ``instance_url``); never a secret.
    ``default_expires_in``
        seconds, for providers whose token response carries no ``expires_in``.
    ``token_header``
        how API requests (the health check) present the access token; the template sees
        ``{access_token}`` and the fields. Shopify: ``X-Shopify-Access-Token``.
    ``issuer``, ``iss_parameter_supported``
        RFC 9207: the provider's issuer identifier, and whether it puts ``iss`` on every
        authorization response (its metadata's ``authorization_response_iss_parameter_supported``).
        With an issuer declared, a callback's ``iss`` must equal it exactly; when supported,
        a callback without ``iss`` is refused too. Both defend against mix-up attacks.
    ``account_id``
        the metadata key holding the connected account's immutable id at the provider
        (Shopify: ``shop``; a ``token_metadata`` path such as ``team.id``; an
        ``after_connect`` key). Never an email or a display name. A reinstall that connects
        another account is refused while the integration holds a credential.
    ``hooks``
        quirks as code; see :class:`Hooks`.
    """

    setup_type: ClassVar[SetupType] = "oauth"

    authorize_url: str
    token_url: str
    revoke_url: str | None = None
    revoke_style: Literal["rfc7009", "bearer"] = "rfc7009"
    scopes: tuple[str, ...] = ()
    scope_separator: str = " "
    pkce: bool = True
    client_auth_method: Literal["client_secret_basic", "client_secret_post"] = (
        "client_secret_post"
    )
    token_request_format: Literal["form", "json"] = "form"
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    token_params: Mapping[str, str] = field(default_factory=dict)
    token_metadata: tuple[str, ...] = ()
    default_expires_in: int | None = None
    token_header: Header = Header(name="Authorization", template="Bearer {access_token}")
    issuer: str | None = None
    iss_parameter_supported: bool = False
    account_id: str | None = None
    hooks: Hooks = Hooks()

    def validate(self) -> None:
        super().validate()
        where = f"provider {self.slug!r}"
        if self.client_auth_method not in ("client_secret_basic", "client_secret_post"):
            raise ProviderError(f"{where}: client_auth_method must be client_secret_basic "
                                "or client_secret_post")
        if self.token_request_format not in ("form", "json"):
            raise ProviderError(f"{where}: token_request_format must be form or json")
        if self.scope_separator not in (" ", ","):
            raise ProviderError(f"{where}: scope_separator must be a space or a comma")
        if not isinstance(self.iss_parameter_supported, bool):
            raise ProviderError(f"{where}: iss_parameter_supported must be true or false")
        if self.iss_parameter_supported and self.issuer is None:
            raise ProviderError(f"{where}: iss_parameter_supported needs an issuer")

    def urls(self) -> dict[str, str]:
        found = super().urls()
        found["authorize_url"] = self.authorize_url
        found["token_url"] = self.token_url
        if self.revoke_url:
            found["revoke_url"] = self.revoke_url
        if self.issuer is not None:
            found["issuer"] = self.issuer
        return found


@dataclass(frozen=True, kw_only=True)
class ApiKeyProvider(Provider):
    """A provider reached with a static key.

    ``apply`` says how the key is sent (:class:`Header` or :class:`Basic` templates over the
    fields). ``verify`` is the request that must succeed before anything is stored.
    """

    setup_type: ClassVar[SetupType] = "api_key"

    apply: Header | Basic
    verify: Request | None = None

    def urls(self) -> dict[str, str]:
        found = super().urls()
        if self.verify:
            found["verify"] = self.verify.url
        return found

    def validate(self) -> None:
        super().validate()
        if not any(f.secret for f in self.fields):
            raise ProviderError(f"provider {self.slug!r}: declares no secret field")
        names = {f.name for f in self.fields}
        templates = ([self.apply.template] if isinstance(self.apply, Header)
                     else [self.apply.username, self.apply.password])
        for template in templates:
            missing = set(placeholders(template)) - names
            if missing:
                raise ProviderError(
                    f"provider {self.slug!r}: apply uses undeclared fields {sorted(missing)}"
                )


@dataclass(frozen=True, kw_only=True)
class BasicAuthProvider(ApiKeyProvider):
    """An :class:`ApiKeyProvider` whose credential is a username and password."""

    setup_type: ClassVar[SetupType] = "basic"


@dataclass(frozen=True, kw_only=True)
class WebhookProvider(Provider):
    """A provider reached by posting to a webhook URL the user pastes (a secret field)."""

    setup_type: ClassVar[SetupType] = "webhook"


def placeholders(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def check_url(url: str, where: str) -> None:
    # Placeholders stand for validated host labels; check the URL with them filled in.
    parts = urlsplit(re.sub(r"\{[a-z_]+\}", "x", url))
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return
    raise ProviderError(f"{where}: {url!r} must be https (http only for loopback hosts)")
