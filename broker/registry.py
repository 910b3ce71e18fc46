"""Load provider declarations from the ``broker.providers`` entry-point group."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType

from broker.settings import ClientCredentials, Settings, env_slug
from broker.spec import Provider, ProviderError

GROUP = "broker.providers"


def _source(ep: EntryPoint) -> str:
    dist = ep.dist.name if ep.dist is not None else "?"
    return f"{ep.value} (from {dist})"


def load(eps: Iterable[EntryPoint] | None = None) -> Mapping[str, Provider]:
    """Import, validate and index every registered provider; refuse duplicates.

    Called once by the app's lifespan and by CLI commands; there is no module-level cache.
    """
    found: dict[str, Provider] = {}
    sources: dict[str, str] = {}
    for ep in entry_points(group=GROUP) if eps is None else eps:
        if ep.name in sources:
            raise ProviderError(
                f"provider {ep.name!r} is registered twice: {sources[ep.name]} and {_source(ep)}"
            )
        try:
            obj = ep.load()
        except Exception as exc:
            raise ProviderError(
                f"cannot load provider {ep.name!r} from {_source(ep)}: {exc}") from None
        if not isinstance(obj, Provider):
            raise ProviderError(f"{_source(ep)} is not a broker.spec provider")
        if obj.slug != ep.name:
            raise ProviderError(
                f"entry point {ep.name!r} points at provider {obj.slug!r} ({_source(ep)})"
            )
        obj.validate()
        found[obj.slug] = obj
        sources[obj.slug] = _source(ep)
    return MappingProxyType(dict(sorted(found.items())))


def load_configured(settings: Settings) -> tuple[Mapping[str, Provider],
                                                 Mapping[str, ClientCredentials]]:
    """Entry-point providers with ``BROKER_PROVIDERS_FILE`` applied, and the OAuth client
    credentials by slug (``BROKER_<SLUG>_CLIENT_*`` win over the file)."""
    from broker import providers_file

    providers: Mapping[str, Provider] = load()
    clients: dict[str, ClientCredentials] = {}
    if settings.providers_file is not None:
        providers, clients = providers_file.load(settings.providers_file, providers)
    for slug in providers:
        if (found := settings.oauth_clients.get(env_slug(slug))) is not None:
            clients[slug] = found
    return providers, MappingProxyType(clients)
