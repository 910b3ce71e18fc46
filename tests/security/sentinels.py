"""Sentinel scanning: catch a secret in what the broker logs, whatever the level and format.

``Capture`` is a logging handler for the root logger that keeps every record whole (message,
arguments, extras, exception and stack text) together with the broker request id current when
it was emitted. ``forms(secret)`` lists the shapes a secret can take in a log line (as is,
percent-encoded, hex, base64 at any alignment, inside an HTTP Basic pair) and ``leaks()``
reports which of them appear where. Shared by LG-01 and by any test that must show a value
never reaches a log (KS-01, AU-03, AK-01).

    capture = Capture.install()           # root at DEBUG, every library logger opened
    ...                                   # drive the broker
    assert not leaks(capture.texts(), {"client secret": secret}), ...
"""

from __future__ import annotations

import base64
import logging
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from broker.logs import STANDARD_ATTRS, request_id_var

# A marker the fakes and the tests put into every secret they mint, so that a fragment of a
# secret (a truncated body, a prefix in an error message) is caught, not only the whole value.
MARKER = "LGSENTINEL"

# Every logger a broker process writes through, opened to DEBUG by Capture.install().
LOUD_LOGGERS = ("broker", "authlib", "httpx2", "httpx", "httpcore2", "httpcore", "hpack", "h11",
                "sqlalchemy", "sqlalchemy.engine", "sqlalchemy.pool", "aiosqlite", "asyncpg",
                "redis", "asyncio", "uvicorn", "uvicorn.error", "uvicorn.access", "starlette")
SHORTEST_FORM = 8  # encodings shorter than this match by chance


def _b64_cores(raw: bytes) -> set[str]:
    """The base64 characters fully determined by ``raw`` when it sits at each of the three
    byte alignments inside a longer base64 string (standard and URL-safe alphabets)."""
    out: set[str] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        core = encoded[(shift * 8 + 5) // 6:((shift + len(raw)) * 8) // 6]
        out |= {core, core.replace("+", "-").replace("/", "_")}
    return out


def forms(secret: str | bytes) -> set[str]:
    """The shapes of ``secret`` worth searching for in log text."""
    raw = secret.encode() if isinstance(secret, str) else secret
    found = {raw.hex(), raw.hex().upper(), *_b64_cores(raw)}
    if isinstance(secret, str):
        found |= {secret, quote(secret, safe=""), quote_plus(secret)}
    return {f for f in found if len(f) >= SHORTEST_FORM}


def basic_forms(user: str, password: str) -> set[str]:
    """An HTTP Basic credential (RFC 6749 2.3.1 form-encodes both parts first)."""
    pair = f"{quote_plus(user)}:{quote_plus(password)}"
    return {base64.b64encode(pair.encode()).decode().rstrip("="), *forms(pair)}


@dataclass
class Captured:
    record: logging.LogRecord
    request_id: str | None  # the broker request being served when it was emitted, if any


class Capture(logging.Handler):
    """Keeps every record that reaches the root logger. ``ignore(captured)`` is True for
    records that are not the broker's (a test's own HTTP client, a fake provider)."""

    def __init__(self, ignore: Callable[[Captured], bool] | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[Captured] = []
        self.ignore = ignore

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(Captured(record, request_id_var.get()))

    def kept(self) -> list[Captured]:
        return [c for c in self.records if self.ignore is None or not self.ignore(c)]

    def texts(self) -> Iterator[tuple[str, str]]:
        """(where, text) for every searchable piece of every kept record."""
        for c in self.kept():
            r = c.record
            where = f"{r.name}:{r.levelname}:{r.threadName}"
            yield where, str(r.msg)
            yield where, repr(r.args)
            try:
                yield where, r.getMessage()
            except Exception as exc:  # a bad format string is the library's bug, not a leak
                yield where, f"<unformattable: {type(exc).__name__}>"
            extras = {k: v for k, v in vars(r).items() if k not in STANDARD_ATTRS}
            yield where, repr(extras)
            if r.exc_info and r.exc_info[1] is not None:
                yield where, "".join(traceback.format_exception(r.exc_info[1]))
            if r.exc_text:
                yield where, r.exc_text
            if r.stack_info:
                yield where, r.stack_info

    @classmethod
    def install(cls, ignore: Callable[[Captured], bool] | None = None) -> Capture:
        capture = cls(ignore=ignore)
        root = logging.getLogger()
        root.addHandler(capture)
        root.setLevel(logging.DEBUG)
        for name in LOUD_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        return capture


def leaks(texts: Iterable[tuple[str, str]], secrets: Mapping[str, str | bytes | set[str]],
          marker: str | None = MARKER) -> list[str]:
    """One line per (secret, place) where a form of a secret, or the marker, was found.
    A secret given as a set is a set of forms already (see ``basic_forms``)."""
    wanted = {name: (value if isinstance(value, set) else forms(value))
              for name, value in secrets.items()}
    if marker:
        wanted["a sentinel (marker)"] = {marker}
    found: list[str] = []
    for where, text in texts:
        for name, shapes in wanted.items():
            shape = next((s for s in shapes if s in text), None)
            if shape is not None:
                at = text.index(shape)
                # The context before it, never the secret itself.
                found.append(f"{name} in {where}: ...{text[max(0, at - 80):at]!r}<HERE>")
    return found
