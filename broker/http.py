"""HTTP plumbing shared by all routes: request ids, access log, error envelope, JSON bodies."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.errors import ApiError, BadRequest, Unprocessable
from broker.logs import request_id_var

log = logging.getLogger("broker.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Path segments that carry a secret: single-use connect session tokens, and the ids of the
# connect forms they lead to.
SECRET_PATH = re.compile(r"^(/connect/(?:forms/)?)[^/]+")
# Seconds a client should wait after a 503. Short: outages here are restarts and failovers,
# and the broker recovers on its own as soon as the dependency is back.
RETRY_AFTER = b"5"
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
QUERY_NAME = re.compile(r"[A-Za-z0-9_.\[\]-]{1,32}")


def logged_query(raw: bytes) -> str:
    """A query string as the access log shows it: the parameter names, every value
    ``[REDACTED]``. Callbacks carry codes and state there (RFC 9700 4.2), and any value may
    be a secret some provider chose to put in a URL."""
    names = [unquote_plus(part.partition("=")[0]) for part in
             raw.decode("latin-1").split("&") if part][:20]
    return "&".join(f"{n if QUERY_NAME.fullmatch(n) else '[REDACTED]'}=[REDACTED]"
                    for n in names)


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _json_dumps(content)


def ok(data: Any, status: int = 200) -> Response:
    return Json({"data": data}, status_code=status)


def error_body(status: int, code: str, message: str) -> Response:
    return Json({"error": {"code": code, "message": message,
                           "request_id": request_id_var.get()}}, status_code=status)


async def api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_body(exc.status, exc.code, exc.message)


async def http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = {404: "No such route.", 405: "Method not allowed on this route."}.get(
        exc.status_code, "Request rejected.")
    response = error_body(exc.status_code, code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


class RequestContext:
    """Outermost middleware: assigns the request id, answers unexpected errors with the
    error envelope (so even a 500 carries ``X-Request-Id``), adds ``Retry-After`` to every
    503 and writes one access line."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID.match(incoming) else f"req_{secrets.token_hex(8)}"
        token = request_id_var.set(request_id)
        started, status = time.perf_counter(), 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started, status = True, message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                # Every 503 says when to come back, whichever route answered it (an error
                # page, the API's envelope, the readiness probe): clients and load balancers
                # back off instead of hammering a broker whose dependency is down.
                if status == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", RETRY_AFTER))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error")
            if not response_started:
                await error_body(500, "internal_error", "Internal error.")(
                    scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
            if metrics is not None:
                metrics.requests.labels(route, scope["method"], str(status)).inc()
                metrics.latency.labels(route).observe(elapsed)
            line = {
                "method": scope["method"],
                "path": SECRET_PATH.sub(r"\1[REDACTED]", scope["path"])[:200],
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
            }
            if scope.get("query_string"):
                line["query"] = logged_query(scope["query_string"])
            log.info("request", extra=line)
            request_id_var.reset(token)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing one over ``limit`` bytes before reading it whole."""
    declared = request.headers.get("content-length")
    if declared is not None and (not (declared.isascii() and declared.isdigit())
                                 or int(declared) > limit):
        raise BadRequest(f"The body is larger than {limit} bytes.", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(f"The body is larger than {limit} bytes.", code="body_too_large")
    return bytes(body)


async def read_form(request: Request, limit: int) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; a repeated field keeps its first
    value. (Parsed here: Starlette's form parser needs python-multipart for nothing more.)"""
    body = await read_body(request, limit)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50,
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The form could not be read.", code="invalid_form") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


async def read_json(request: Request, limit: int, *, optional: bool = False) -> Any:
    """The request body as JSON (see :func:`read_body`). An empty body is ``None`` when
    ``optional``."""
    body = await read_body(request, limit)
    if not body.strip():
        if optional:
            return None
        raise BadRequest("The body is empty; send a JSON object.", code="invalid_json")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant,
                           object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # Say where, not what: the body may hold anything.
        where = f" at line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise BadRequest(f"The body is not valid JSON{where}.", code="invalid_json") from None
    if optional and value is None:
        # An absent body is allowed; a JSON null is not "absent", and not an object either.
        raise Unprocessable("The body must be a JSON object, or empty.")
    return value
