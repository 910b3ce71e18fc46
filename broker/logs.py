"""JSON-lines logging on stdout, each line carrying the current request id."""

from __future__ import annotations

import json
import logging
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
        return json.dumps(line, default=str)


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
