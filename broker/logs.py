"""JSON-lines logging on stdout, each line carrying the current request id."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Libraries that log secrets below INFO: Authlib logs the PKCE verifier at DEBUG, httpx and
# httpcore log request lines and headers.
CAPPED_LOGGERS = ("authlib", "httpx2", "httpx", "httpcore2", "httpcore", "hpack",
                  "sqlalchemy.engine", "asyncio", "aiosqlite")
STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "color_message"}


# The last line of defence: whatever a library or a message carries, these shapes never
# reach a log line. Names of secret-bearing parameters, in query strings, forms, JSON and
# reprs; credentials in Authorization headers; the broker's own keys and tokens.
_SECRET_NAMES = (r"access_token|refresh_token|id_token|client_secret|code_verifier|"
                 r"code|state|password|passwd|api_key|apikey|secret|token|server_token|"
                 r"authorization|x-api-key|cookie|hmac")
_REDACTIONS = (
    # Headers as HTTP libraries dump them, (b'name', b'value') pairs: every header whose
    # name says it carries a credential (Authorization, Cookie, X-Shopify-Access-Token...).
    (re.compile(rf"(?i)(\(b?['\"][\w-]*(?:{_SECRET_NAMES}|key)[\w-]*['\"],\s*b?['\"])"
                r"[^'\"]+"), r"\1[REDACTED]"),
    # A cookie header holds several name=value pairs: all of it goes.
    (re.compile(r"(?i)\b((?:set-)?cookie\\?[\"']?\s*:\s*\\?[\"']?)[^\"'\n\\]+"),
     r"\1[REDACTED]"),
    (re.compile(r"(?i)\b(bearer|basic|token|klaviyo-api-key|oauth)(\s+)[A-Za-z0-9._~+/=:-]{6,}"),
     r"\1\2[REDACTED]"),
    # A quoted value (JSON, reprs, JSON inside JSON) goes whole, to its closing quote:
    # spaces, commas and escaped quotes included.
    (re.compile(rf"(?i)((?:{_SECRET_NAMES})\\?[\"']?\s*[=:]\s*)(\\?[\"'])"
                r"(?:\\.|(?!\2)[^\\\n])*?\2"), r"\1\2[REDACTED]\2"),
    (re.compile(rf"(?i)((?:{_SECRET_NAMES})\\?[\"']?\s*[=:]\s*\\?[\"']?)[^\s\"'&,;}}\\]+"),
     r"\1[REDACTED]"),
    (re.compile(r"\b(riq|rst)_[A-Za-z0-9]{20,}"), r"\1_[REDACTED]"),
)


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def scrub(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a record where it is made, so that every handler (an error tracker's, a test's)
    sees what the broker's own would print. Records with nothing to hide keep their
    arguments, which some formatters read."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is reported by the handler
        return record
    redacted = redact(message)
    if redacted != message:
        record.msg, record.args = redacted, ()
    return record


def _scrubbing(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make_scrubbed(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return scrub(make(*args, **kwargs))

    make_scrubbed.scrubs = True  # type: ignore[attr-defined]
    return make_scrubbed


# OAuth error codes (RFC 6749 5.2) as providers send them; anything else is not quoted.
OAUTH_ERROR = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MEDIA_TYPE = re.compile(r"^[\w.+-]{1,64}/[\w.+-]{1,64}$")


def describe_response(response: Any) -> dict[str, Any]:
    """What logs and errors may say about a provider's answer (an ``httpx`` response):
    status, OAuth ``error`` code, content type, length and a SHA-256 prefix of the body,
    never the body, which may echo the code, the client secret or tokens. The digest tells
    two answers apart, and matches a body the provider's support quotes back."""
    body: bytes = response.content
    error = None
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        error = doc["error"] if OAUTH_ERROR.match(doc["error"]) else "unrecognised"
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return {"status": response.status_code, "error": error,
            "content_type": media if _MEDIA_TYPE.match(media) else (media and "unrecognised"),
            "body_bytes": len(body), "body_sha256": hashlib.sha256(body).hexdigest()[:16]}


def summary(facts: dict[str, Any]) -> str:
    """``describe_response`` facts as a phrase for an exception message."""
    return (f"HTTP {facts['status']}, error {facts['error'] or '-'}, "
            f"{facts['content_type'] or 'no content type'}, {facts['body_bytes']} bytes, "
            f"sha256 {facts['body_sha256']}")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in STANDARD_ATTRS})
        if record.exc_info and record.exc_info[0] is not None:
            # The type and where it happened, not the message: messages of driver and
            # library errors can quote the values they were given.
            line["exc_type"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str))


def cap_library_loggers() -> None:
    """Keep libraries that log secrets or SQL parameters below WARNING quiet, whatever the
    broker's own level."""
    for name in CAPPED_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if not getattr(logging.getLogRecordFactory(), "scrubs", False):
        logging.setLogRecordFactory(_scrubbing(logging.getLogRecordFactory()))
    cap_library_loggers()
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The broker writes its own access line (no query strings, session tokens redacted).
    logging.getLogger("uvicorn.access").disabled = True
