"""The catalog: every registered provider, joined with the project's integration if any."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from broker.db import iso
from broker.errors import Unprocessable
from broker.models import Integration
from broker.spec import OAuth2Provider, Provider

STATUS_FILTERS = ("available", "installed", "active", "paused", "disconnected")
MAX_QUERY = 100



def entry(provider: Provider, integration: Integration | None) -> dict[str, Any]:
    oauth = isinstance(provider, OAuth2Provider)
    return {
        "provider": provider.slug,
        "name": provider.name,
        "description": provider.description,
        "category": provider.category,
        "setup_type": provider.setup_type,
        "docs_url": provider.docs_url,
        "status": integration.status if integration else "available",
        "integration_id": integration.id if integration else None,
        "display_name": integration.display_name if integration else None,
        "health_status": integration.health_status if integration else None,
        "sidebar_enabled": integration.sidebar_enabled if integration else False,
        "last_synced_at": iso(integration.last_synced_at) if integration else None,
        "error_message": integration.error_message if integration else None,
        "scopes": list(provider.scopes) if oauth else [],
        "fields": [
            {"name": f.name, "label": f.label, "description": f.description,
             "secret": f.secret, "optional": f.optional, "pattern": f.pattern,
             "choices": list(f.choices), "example": f.example}
            for f in provider.fields
        ],
        "actions": [{"name": a.name, "description": a.description} for a in provider.actions],
    }


def _matches_status(status: str, wanted: str) -> bool:
    if wanted == "available":
        return status in ("available", "disconnected")
    if wanted == "installed":
        return status in ("active", "paused")
    return status == wanted


def check_filters(query: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    unknown = sorted(set(query) - {"q", "category", "status"})
    if unknown:
        raise Unprocessable(f"Unknown query parameter(s): {', '.join(unknown)}. "
                            "Allowed: q, category, status.")
    q, category, status = query.get("q"), query.get("category"), query.get("status")
    for name, value in (("q", q), ("category", category)):
        if value is not None and len(value) > MAX_QUERY:
            raise Unprocessable(f"{name} is longer than {MAX_QUERY} characters.")
    if status is not None and status not in STATUS_FILTERS:
        raise Unprocessable(f"status must be one of {', '.join(STATUS_FILTERS)}.",
                            code="invalid_status")
    return q, category, status


def search(
    providers: Mapping[str, Provider],
    integrations: Sequence[Integration],
    *, q: str | None, category: str | None, status: str | None,
) -> list[dict[str, Any]]:
    by_slug = {i.provider: i for i in integrations}
    needle = q.strip().casefold() if q else ""
    out = []
    for provider in providers.values():
        if category and provider.category != category.strip().casefold():
            continue
        haystack = " ".join((provider.slug, provider.name, provider.category,
                             provider.description)).casefold()
        if needle and needle not in haystack:
            continue
        item = entry(provider, by_slug.get(provider.slug))
        if status and not _matches_status(item["status"], status):
            continue
        out.append(item)
    return out
