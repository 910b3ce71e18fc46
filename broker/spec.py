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

URLs must be https; loopback hosts (``127.0.0.1``, ``localhost``) may use http so that local
fakes can stand in for a provider.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal
from urllib.parse import urlsplit

__all__ = [
    "Action",
    "ApiKeyProvider",
    "Basic",
    "BasicAuthProvider",
    "Field",
    "Header",
    "OAuth2Provider",
    "Provider",
    "ProviderError",
    "Request",
    "SetupType",
    "WebhookProvider",
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

    ``url`` may hold ``{field}`` placeholders. The request succeeds when the status is in
    ``expect_status``.
    """

    url: str
    method: Literal["GET", "POST"] = "GET"
    expect_status: tuple[int, ...] = (200,)


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

    def urls(self) -> dict[str, str]:
        """Every URL the declaration holds, by field name, for validation and display."""
        found = {"docs_url": self.docs_url}
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
        if not SLUG.match(self.slug):
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
        endpoints; ``revoke_url`` is optional (RFC 7009 style revocation).
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
    """

    setup_type: ClassVar[SetupType] = "oauth"

    authorize_url: str
    token_url: str
    revoke_url: str | None = None
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

    def urls(self) -> dict[str, str]:
        found = super().urls()
        found["authorize_url"] = self.authorize_url
        found["token_url"] = self.token_url
        if self.revoke_url:
            found["revoke_url"] = self.revoke_url
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
