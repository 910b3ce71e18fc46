"""The OpenAPI 3.1 description of the v1 API, as served at ``/openapi.json``.

Written out rather than derived: it is a contract for other programs, and
``tests/test_openapi.py`` checks that it and the route table agree.
"""

from __future__ import annotations

from typing import Any

from broker import __version__

V1 = "/v1/projects/{projectId}/integrations"
INTERNAL = "/internal/v1/projects/{projectId}/integrations"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _data(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["data"], "properties": {"data": schema}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _data(schema)}}}


def _linked(response: dict[str, Any], *targets: str) -> dict[str, Any]:
    """``response`` with OpenAPI links to ``targets``: operations on the same integration, the
    project from this request's path and the provider key from this response's body. They
    chain create -> get -> lifecycle -> disconnect -> get, the stateful phase of IV-01
    (tests/security/test_input_validation.py)."""
    return {**response, "links": {target[0].upper() + target[1:]: {
        "operationId": target,
        "parameters": {"projectId": "$request.path.projectId",
                       "provider": "$response.body#/data/provider"},
    } for target in targets}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {400: "Malformed request", 401: "Missing or invalid API key",
            403: "The key lacks the scope", 404: "Unknown project, provider or integration",
            409: "State conflict", 422: "Validation failed",
            429: "Too many failed attempts from this address"}
    return {str(s): {"description": text[s], "content": {"application/json": {
        "schema": _ref("Error")}}} for s in statuses}


def _op(op_id: str, summary: str, scope: str, responses: dict[str, Any], *,
        params: tuple[str, ...] = ("projectId",), query: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, body_required: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "description": f"Requires an API key with the `{scope}` scope.",
        "security": [{"ApiKey": []}],
        "parameters": [{"$ref": f"#/components/parameters/{p}"} for p in params]
        + (query or []),
        "responses": {**responses, **_errors(429)},
    }
    if body is not None:
        op["requestBody"] = {"required": body_required,
                             "content": {"application/json": {"schema": body}}}
    return op


def _browser(op_id: str, summary: str, param: str, responses: dict[str, Any]
             ) -> dict[str, Any]:
    """A browser route: HTML, bound by the connect cookie rather than a key."""
    return {"operationId": op_id, "summary": summary, "security": [],
            "parameters": [{"name": param, "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {**responses, "429": {"description": "Too many requests"}}}


def _internal(op_id: str, summary: str, responses: dict[str, Any], *,
              params: tuple[str, ...] = ("projectId", "provider"),
              query: list[dict[str, Any]] | None = None,
              body: dict[str, Any] | None = None) -> dict[str, Any]:
    op = _op(op_id, summary, "service", responses, params=params, query=query, body=body)
    op["security"] = [{"ServiceToken": []}]
    op["description"] = ("Requires a service token. `X-Acting-Key-Id` names the API key the "
                         "main API acts for; it is carried into the audit record.")
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


NULLABLE_STR = {"type": ["string", "null"]}
TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
HEALTH = {"enum": ["healthy", "degraded", "reauth_required", None]}
SETUP_TYPE = {"type": "string", "enum": ["oauth", "api_key", "basic", "webhook"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "request_id"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "request_id": {"type": "string"}}}},
    },
    "Integration": {
        "type": "object",
        "required": ["id", "provider", "status", "display_name", "setup_type", "health_status",
                     "sidebar_enabled", "last_synced_at", "error_message", "created_at",
                     "updated_at", "settings", "allowed_actions", "metadata"],
        "properties": {
            "id": {"type": "string", "pattern": "^int_"},
            "provider": {"type": "string"},
            "status": {"type": "string", "enum": ["active", "paused", "disconnected"]},
            "display_name": NULLABLE_STR,
            "setup_type": SETUP_TYPE,
            "health_status": HEALTH,
            "sidebar_enabled": {"type": "boolean"},
            "last_synced_at": TIMESTAMP,
            "error_message": NULLABLE_STR,
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "settings": {"type": "object"},
            "allowed_actions": {"type": "array", "items": {"type": "string"}},
            "metadata": {"type": "object"},
            "revoked": {"type": "array", "items": {"type": "string"},
                        "description": "Only on DELETE with revoke=true: what was revoked."},
            "revocation_error": {"type": ["string", "null"],
                                 "description": "Only on DELETE with revoke=true: why "
                                                "nothing was revoked."},
        },
    },
    "CatalogEntry": {
        "type": "object",
        "required": ["provider", "name", "description", "category", "setup_type", "docs_url",
                     "status", "integration_id", "display_name", "health_status",
                     "sidebar_enabled", "last_synced_at", "error_message", "scopes", "fields",
                     "actions"],
        "properties": {
            "provider": {"type": "string"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "category": {"type": "string"},
            "setup_type": SETUP_TYPE,
            "docs_url": {"type": "string"},
            "status": {"type": "string",
                       "enum": ["available", "active", "paused", "disconnected"]},
            "integration_id": NULLABLE_STR,
            "display_name": NULLABLE_STR,
            "health_status": HEALTH,
            "sidebar_enabled": {"type": "boolean"},
            "last_synced_at": TIMESTAMP,
            "error_message": NULLABLE_STR,
            "scopes": {"type": "array", "items": {"type": "string"}},
            "fields": {"type": "array", "items": {"type": "object"}},
            "actions": {"type": "array", "items": {
                "type": "object", "required": ["name", "description"],
                "properties": {"name": {"type": "string"},
                               "description": {"type": "string"}}}},
        },
    },
    "InstallUrl": {
        "type": "object", "required": ["provider", "install_url", "setup_type", "message"],
        "properties": {"provider": {"type": "string"},
                       "install_url": {"type": "string", "format": "uri"},
                       "setup_type": SETUP_TYPE, "message": {"type": "string"}},
    },
    "Credential": {
        "type": "object", "required": ["provider", "setup_type", "metadata", "allowed_actions"],
        "properties": {
            "provider": {"type": "string"}, "setup_type": SETUP_TYPE,
            "access_token": {"type": "string"}, "token_type": {"type": "string"},
            "expires_at": TIMESTAMP, "scopes": {"type": "array", "items": {"type": "string"}},
            "api_key": {"type": ["string", "null"]}, "fields": {"type": "object"},
            "metadata": {"type": "object"},
            "allowed_actions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ConnectSessionRequest": {
        "type": "object", "additionalProperties": False, "required": ["provider"],
        "properties": {
            "provider": {"type": "string"},
            "return_url": {"type": ["string", "null"], "maxLength": 2000},
            "params": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "Pre-filled non-secret inputs (a Shopify shop)."},
        },
    },
    "ConnectSession": {
        "type": "object", "required": ["connect_url", "expires_at"],
        "properties": {"connect_url": {"type": "string", "format": "uri"},
                       "expires_at": {"type": "string", "format": "date-time"}},
    },
    "InstallUrlRequest": {
        "type": "object", "additionalProperties": False,
        "properties": {"return_url": {
            "type": ["string", "null"], "maxLength": 2000,
            "description": "Where the browser goes afterwards; must be on "
                           "BROKER_RETURN_URL_ALLOWLIST."}},
    },
    "LifecyclePatch": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {
            "status": {"type": "string", "enum": ["active", "paused", "disconnected"]},
            "display_name": {"type": ["string", "null"], "minLength": 1, "maxLength": 100},
            "sidebar_enabled": {"type": "boolean"},
            "settings": {"type": "object",
                         "description": "Merged into the stored settings; null removes a key."},
            "allowed_actions": {"type": "array", "uniqueItems": True,
                                "items": {"type": "string"},
                                "description": "Action names the provider declares."},
        },
    },
}


def spec(server_url: str) -> dict[str, Any]:
    read, write = "read", "integrations:write"
    return {
        "openapi": "3.1.0",
        "info": {"title": "Integration broker: Integrations API", "version": __version__},
        "servers": [{"url": server_url}],
        "components": {
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "ServiceToken": {"type": "http", "scheme": "bearer"},
            },
            "parameters": {
                "projectId": {"name": "projectId", "in": "path", "required": True,
                              "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}},
                "provider": {"name": "provider", "in": "path", "required": True,
                             "schema": {"type": "string", "maxLength": 64,
                                        "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$"}},
            },
            "schemas": SCHEMAS,
        },
        "paths": {
            V1: {"get": _op(
                "listIntegrations", "List the project's integrations", read,
                {"200": _ok("Integrations in every status",
                            {"type": "array", "items": _ref("Integration")}),
                 **_errors(401, 404, 422)})},
            f"{V1}/catalog": {"get": _op(
                "getCatalog", "Browse the catalog", read,
                {"200": _ok("Catalog entries", {"type": "array",
                                                "items": _ref("CatalogEntry")}),
                 **_errors(401, 404, 422)},
                query=[
                    _query("q", {"type": "string", "maxLength": 100},
                           "Free text over slug, name, category and description."),
                    _query("category", {"type": "string", "maxLength": 100}, "Exact category."),
                    _query("status", {"type": "string", "enum": [
                        "available", "installed", "active", "paused", "disconnected"]},
                           "available: never installed or disconnected; installed: active "
                           "or paused."),
                ])},
            f"{V1}/catalog/{{provider}}": {"get": _op(
                "getCatalogEntry", "One catalog entry", read,
                {"200": _linked(_ok("The entry", _ref("CatalogEntry")),
                                "updateLifecycle", "disconnectIntegration", "createInstallUrl"),
                 **_errors(401, 404, 422)},
                params=("projectId", "provider"))},
            f"{V1}/{{provider}}/install-url": {"post": _op(
                "createInstallUrl", "Get a URL that installs the provider in a browser", write,
                {"200": _linked(_ok("The install URL", _ref("InstallUrl")),
                                "getCatalogEntry", "getCredentials"),
                 **_errors(400, 401, 403, 404, 422)},
                params=("projectId", "provider"), body=_ref("InstallUrlRequest"),
                body_required=False)},
            f"{V1}/{{provider}}/lifecycle": {"patch": _op(
                "updateLifecycle", "Change status, name, sidebar, settings or actions", write,
                {"200": _linked(_ok("The updated integration", _ref("Integration")),
                                "getCatalogEntry", "disconnectIntegration"),
                 **_errors(400, 401, 403, 404, 409, 422)},
                params=("projectId", "provider"), body=_ref("LifecyclePatch"))},
            f"{V1}/{{provider}}": {"delete": _op(
                "disconnectIntegration", "Disconnect: destroy the stored credential", write,
                {"200": _linked(_ok("The disconnected integration", _ref("Integration")),
                                "getCatalogEntry", "updateLifecycle", "getCredentials"),
                 **_errors(401, 403, 404, 422)},
                params=("projectId", "provider"),
                query=[_query("revoke", {"type": "string", "enum": ["true", "false"]},
                              "Also revoke the tokens at the provider where it declares "
                              "how.")])},
            "/internal/v1/projects/{projectId}/connect-sessions": {"post": {
                "operationId": "createConnectSession",
                "summary": "A single-use, 10-minute link that starts an install in a browser",
                "description": "Requires a service token.",
                "security": [{"ServiceToken": []}],
                "parameters": [{"$ref": "#/components/parameters/projectId"}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("ConnectSessionRequest")}}},
                "responses": {"201": {"description": "The connect link", "content": {
                    "application/json": {"schema": _data(_ref("ConnectSession"))}}},
                    **_errors(400, 401, 404, 422)}}},
            f"{INTERNAL}/{{provider}}/credentials": {"get": _internal(
                "getCredentials", "A usable credential, refreshed first if about to expire",
                {"200": _linked({"description": "The credential", "content": {
                    "application/json": {"schema": _data(_ref("Credential"))}}},
                    "internalUpdateLifecycle", "internalDisconnect"),
                 "409": {"description": "integration_paused, integration_disconnected or "
                                        "reauth_required", "content": {"application/json": {
                                            "schema": _ref("Error")}}},
                 "503": {"description": "refresh_failed, refresh_busy or a dependency down"},
                 "504": {"description": "provider_timeout: the refresh got no answer in time"},
                 **_errors(401, 404, 422)})},
            f"{INTERNAL}/{{provider}}/lifecycle": {"patch": _internal(
                "internalUpdateLifecycle", "As the v1 lifecycle PATCH, for the main API",
                {"200": _linked(_ok("The updated integration", _ref("Integration")),
                                "getCredentials", "internalDisconnect"),
                 **_errors(400, 401, 404, 409, 422)}, body=_ref("LifecyclePatch"))},
            f"{INTERNAL}/{{provider}}": {"delete": _internal(
                "internalDisconnect", "As the v1 DELETE, for the main API",
                {"200": _linked(_ok("The disconnected integration", _ref("Integration")),
                                "getCredentials", "getCatalogEntry", "internalUpdateLifecycle"),
                 **_errors(401, 404, 422)},
                query=[_query("revoke", {"type": "string", "enum": ["true", "false"]},
                              "Also revoke at the provider.")])},
            "/internal/v1/projects/{projectId}/audit": {"get": _internal(
                "listAudit", "The project's audit events, newest first",
                {"200": {"description": "Events"}, **_errors(401, 404, 422)},
                params=("projectId",),
                query=[_query("limit", {"type": "string",
                                        "pattern": "^(?:[1-9][0-9]?|1[0-9]{2}|200)$"},
                              "1-200, default 50"),
                       _query("before", {"type": "string", "pattern": "^[0-9]{1,18}$"},
                              "An event id: page to older events.")])},
            "/connect/{session}": {"get": _browser(
                "openConnect", "Open a connect link: redirect to the provider or show a form",
                "session", {"302": {"description": "On to the provider's consent"},
                            "200": {"description": "The credential form"},
                            "404": {"description": "Not a connect link"},
                            "409": {"description": "No OAuth app is configured for the "
                                                   "provider"},
                            "410": {"description": "Expired or used link"},
                            "503": {"description": "The state store is down"}})},
            "/connect/forms/{form}": {"post": _browser(
                "submitConnectForm", "Submit the credential form", "form",
                {"302": {"description": "On to the provider, or back to the app"},
                 "200": {"description": "Connected"},
                 "400": {"description": "Expired form or another browser"},
                 "409": {"description": "No OAuth app is configured for the provider"},
                 "422": {"description": "Invalid or rejected credential"},
                 "503": {"description": "The provider could not check the credential, or "
                                        "the state store is down"}})},
            "/oauth/{provider}/callback": {"get": _browser(
                "oauthCallback", "The OAuth redirect URI registered at each provider",
                "provider", {"302": {"description": "Back to the app with the outcome"},
                             "200": {"description": "Connected"},
                             "400": {"description": "Unknown, used, expired or foreign "
                                                    "state, or a refused callback"},
                             "502": {"description": "The provider's token endpoint failed"},
                             "503": {"description": "The state store is down"}})},
            "/openapi.json": {"get": {"operationId": "getOpenApi", "summary": "This document",
                                      "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness",
                                 "security": [],
                                 "responses": {"200": {"description": "Alive"}}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                                 "security": [],
                                 "responses": {"200": {"description": "Text exposition"}}}},
            "/readyz": {"get": {"operationId": "readyz", "summary": "Readiness",
                                "security": [],
                                "responses": {"200": {"description": "Ready"},
                                              "503": {"description": "A dependency is "
                                                                     "down"}}}},
        },
    }
