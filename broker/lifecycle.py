"""Lifecycle changes and disconnects: validate, apply, audit, in one transaction."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker import store
from broker.db import utcnow
from broker.errors import Conflict, Unprocessable
from broker.models import Integration
from broker.spec import Provider

STATUSES = ("active", "paused", "disconnected")
PATCH_FIELDS = ("status", "display_name", "sidebar_enabled", "settings", "allowed_actions")
MAX_DISPLAY_NAME = 100
MAX_SETTINGS_BYTES = 16 * 1024
MAX_SETTINGS_DEPTH = 8
MAX_KEY_LENGTH = 100
# Bidirectional overrides make a name read differently from what it is ("Trojan Source").
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class Actor:
    key_id: str | None
    request_id: str | None


def _bad_text(value: str) -> str | None:
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "contains an unpaired surrogate"
        if category == "Cc" or ch in BIDI_CONTROLS:
            return f"contains the control character U+{ord(ch):04X}"
    return None


def _check_json(value: Any, path: str, depth: int) -> None:
    if depth > MAX_SETTINGS_DEPTH:
        raise Unprocessable(f"{path} nests deeper than {MAX_SETTINGS_DEPTH} levels")
    if isinstance(value, str):
        # NUL and unpaired surrogates cannot be stored in every database; reject them up front.
        if "\x00" in value or any(unicodedata.category(c) == "Cs" for c in value):
            raise Unprocessable(f"{path} contains NUL or an unpaired surrogate")
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = _bad_text(key)
            if problem or not key or len(key) > MAX_KEY_LENGTH:
                raise Unprocessable(
                    f"{path} has an invalid key: keys are 1-{MAX_KEY_LENGTH} characters"
                    + (f" and this one {problem}" if problem else "")
                )
            _check_json(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)


def validate_patch(body: Any, provider: Provider) -> dict[str, Any]:
    """Check a lifecycle PATCH body field by field; raise ``Unprocessable`` on the first
    problem. Returns the normalised changes requested."""
    if not isinstance(body, dict):
        raise Unprocessable("The body must be a JSON object.")
    unknown = sorted(set(body) - set(PATCH_FIELDS))
    if unknown:
        raise Unprocessable(
            f"Unknown field(s): {', '.join(map(repr, unknown))}. "
            f"Allowed: {', '.join(PATCH_FIELDS)}.", code="unknown_field")
    if not body:
        raise Unprocessable(f"Nothing to update: give any of {', '.join(PATCH_FIELDS)}.")
    out: dict[str, Any] = {}
    if "status" in body:
        if body["status"] not in STATUSES:
            raise Unprocessable(
                f"status must be one of {', '.join(STATUSES)}.", code="invalid_status")
        out["status"] = body["status"]
    if "display_name" in body:
        name = body["display_name"]
        if name is not None:
            if not isinstance(name, str):
                raise Unprocessable("display_name must be a string or null.")
            name = unicodedata.normalize("NFC", name.strip())
            problem = _bad_text(name)
            if problem:
                raise Unprocessable(f"display_name {problem}.")
            if not 1 <= len(name) <= MAX_DISPLAY_NAME:
                raise Unprocessable(f"display_name must be 1-{MAX_DISPLAY_NAME} characters.")
        out["display_name"] = name
    if "sidebar_enabled" in body:
        if not isinstance(body["sidebar_enabled"], bool):
            raise Unprocessable("sidebar_enabled must be true or false.")
        out["sidebar_enabled"] = body["sidebar_enabled"]
    if "settings" in body:
        settings = body["settings"]
        if not isinstance(settings, dict):
            raise Unprocessable("settings must be a JSON object (null removes a key).")
        _check_json(settings, "settings", 1)
        out["settings"] = settings
    if "allowed_actions" in body:
        actions = body["allowed_actions"]
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise Unprocessable("allowed_actions must be a list of action names.")
        declared = [a.name for a in provider.actions]
        unknown_actions = [a for a in actions if a not in declared]
        if unknown_actions:
            raise Unprocessable(
                f"Unknown action(s) for {provider.slug}: {json.dumps(unknown_actions)}. "
                f"Declared: {', '.join(declared) or 'none'}.", code="unknown_action")
        if len(set(actions)) != len(actions):
            raise Unprocessable("allowed_actions lists an action twice.")
        out["allowed_actions"] = actions
    return out


def _merge_settings(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(json.dumps(merged).encode()) > MAX_SETTINGS_BYTES:
        raise Unprocessable(f"settings would exceed {MAX_SETTINGS_BYTES} bytes.")
    return merged


async def update(
    session: AsyncSession, integration: Integration, changes: Mapping[str, Any], actor: Actor
) -> dict[str, Any]:
    """Apply validated ``changes``; returns the audit record's ``changes`` (empty when
    nothing actually changed, in which case no audit row is written)."""
    audit: dict[str, Any] = {}
    target = changes.get("status")
    if target in ("active", "paused") and integration.status == "disconnected":
        if not await store.has_credential(session, integration.id):
            raise Conflict(
                "This integration was disconnected and its credential destroyed; "
                "reconnect it through install-url.", code="reinstall_required")
    for name in ("status", "display_name", "sidebar_enabled", "allowed_actions"):
        if name in changes and getattr(integration, name) != changes[name]:
            audit[name] = {"from": getattr(integration, name), "to": changes[name]}
            setattr(integration, name, changes[name])
    if "settings" in changes:
        merged = _merge_settings(integration.settings, changes["settings"])
        if merged != integration.settings:
            # Keys only: setting values may be secret, and the audit log holds none.
            audit["settings"] = {
                "set": sorted(k for k, v in changes["settings"].items()
                              if v is not None and integration.settings.get(k) != v),
                "removed": sorted(k for k, v in changes["settings"].items()
                                  if v is None and k in integration.settings),
            }
            integration.settings = merged
    if target == "disconnected" and "status" in audit:
        await _wipe(session, integration)
    if audit:
        integration.updated_at = utcnow()
        store.record_event(session, type="integration.lifecycle.updated",
                           project_id=integration.project_id, integration=integration,
                           actor_key_id=actor.key_id, request_id=actor.request_id,
                           details={"changes": audit})
    return audit


async def _wipe(session: AsyncSession, integration: Integration) -> bool:
    integration.status = "disconnected"
    integration.sidebar_enabled = False
    integration.health_status = None
    return await store.destroy_credential(session, integration.id)


async def disconnect(
    session: AsyncSession, integration: Integration, actor: Actor, *,
    revoke: bool, revoked: list[str], revocation_error: str | None = None,
) -> bool:
    """Disconnect: status ``disconnected``, sidebar hidden, health cleared, credential
    material destroyed (the row keeps its history). Returns whether anything changed.

    ``revoked`` lists what the caller already revoked at the provider, for the audit row.
    """
    before = {"status": integration.status, "sidebar_enabled": integration.sidebar_enabled,
              "health_status": integration.health_status}
    destroyed = await _wipe(session, integration)
    after = {"status": integration.status, "sidebar_enabled": integration.sidebar_enabled,
             "health_status": integration.health_status}
    if before == after and not destroyed:
        return False
    integration.updated_at = utcnow()
    store.record_event(session, type="integration.disconnected",
                       project_id=integration.project_id, integration=integration,
                       actor_key_id=actor.key_id, request_id=actor.request_id,
                       details={"from": before, "to": after, "credential_destroyed": destroyed,
                                "revoke_requested": revoke, "revoked": revoked,
                                "revocation_error": revocation_error})
    return True
