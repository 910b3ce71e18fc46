"""JSON-lines logging on stdout, each line carrying the current request id."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Libraries that log secrets below INFO: Authlib logs the PKCE verifier at DEBUG, httpx and
# httpcore log request lines and headers.
CAPPED_LOGGERS = ("authlib", "httpx2", "httpx", "httpcore", "hpack", "sqlalchemy.engine",
                  "asyncio", "aiosqlite")
STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "color_message"}


# The last line of defence: whatever a library or a message carries, these shapes never
# reach a log line. Names of secret-bearing parameters, in query strings, forms, JSON and
# reprs; credentials in Authorization headers; the broker's own keys and tokens.
_SECRET_NAMES = (r"access_token|refresh_token|id_token|client_secret|code_verifier|"
                 r"code|state|password|passwd|api_key|apikey|secret|token|server_token|"
                 r"authorization|x-api-key|cookie|hmac")
_REDACTIONS = (
    (re.compile(r"(?i)\b(bearer|basic|token|klaviyo-api-key|oauth)(\s+)[A-Za-z0-9._~+/=:-]{6,}"),
     r"\1\2[REDACTED]"),
    (re.compile(rf"(?i)((?:{_SECRET_NAMES})\\?[\"']?\s*[=:]\s*\\?[\"']?)[^\s\"'&,;}}\\]+"),
     r"\1[REDACTED]"),
    (re.compile(r"\b(riq|rst)_[A-Za-z0-9]{20,}"), r"\1_[REDACTED]"),
)


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


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
    cap_library_loggers()
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The broker writes its own access line (no query strings, session tokens redacted).
    logging.getLogger("uvicorn.access").disabled = True
