"""``broker integrations ...``: the v1 API from the command line, through ``broker.client``.

Unlike the operator commands these talk to a running broker, never to the database. The
broker, key and project come from ``--api-url``/``--api-key``/``--project`` or from
``BROKER_API_URL``/``BROKER_API_KEY``/``BROKER_PROJECT``. Tables by default, ``--json`` for
scripts, and the exit codes below.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

EXIT_OK, EXIT_API_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_API_URL = "http://127.0.0.1:8000"
STATUS_FILTERS = ("available", "installed", "active", "paused", "disconnected")
STATUSES = ("active", "paused", "disconnected")
# Bidirectional overrides make text read differently from what it is.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

EPILOG = f"""\
connection:
  --api-url, --api-key and --project, or BROKER_API_URL, BROKER_API_KEY and
  BROKER_PROJECT (the options win); the URL defaults to {DEFAULT_API_URL}.
  Prefer BROKER_API_KEY to --api-key: other users can read command lines.
  The key is never printed.

exit codes:
  0  success
  1  the broker answered with an error (4xx/5xx); stderr says
     "broker: error: <code>: <message> (request <id>)"
  2  usage or configuration error (bad option, no API key or project)
  3  cannot reach the broker (refused, timed out, not an HTTP server)
"""


# -- output ------------------------------------------------------------------------------------

def _clean(value: Any) -> str:
    """A value as one line of plain text: no control characters (a provider's error message
    must not drive the terminal)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = str(value)
    return "".join("?" if unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS else c
                   for c in text)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    cells = [[_clean(r.get(key)) for key, _ in columns] for r in rows]
    heads = [title for _, title in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
             for row in [heads, *cells]]
    return "\n".join(lines)


def _fields(doc: dict[str, Any], keys: Sequence[str]) -> str:
    width = max(len(k) for k in keys)
    return "\n".join(f"{k + ':':<{width + 1}} {_clean(doc.get(k))}" for k in keys if k in doc)


def _emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> int:
    print(json.dumps(data, ensure_ascii=False) if args.json else human(data))
    return EXIT_OK


def _error(message: str, code: int) -> int:
    print(f"broker: error: {_clean(message)}", file=sys.stderr)
    return code


INTEGRATION_COLUMNS = (("provider", "PROVIDER"), ("status", "STATUS"),
                       ("display_name", "DISPLAY NAME"), ("health_status", "HEALTH"),
                       ("sidebar_enabled", "SIDEBAR"), ("last_synced_at", "LAST SYNCED"))
CATALOG_COLUMNS = (("provider", "PROVIDER"), ("name", "NAME"), ("category", "CATEGORY"),
                   ("setup_type", "SETUP"), ("status", "STATUS"), ("health_status", "HEALTH"))
INTEGRATION_FIELDS = ("id", "provider", "status", "display_name", "setup_type",
                      "health_status", "sidebar_enabled", "last_synced_at", "error_message",
                      "created_at", "updated_at", "settings", "allowed_actions")
ENTRY_FIELDS = ("provider", "name", "category", "setup_type", "description", "docs_url",
                "status", "integration_id", "display_name", "health_status",
                "sidebar_enabled", "last_synced_at", "error_message", "scopes")


def _integrations_table(rows: list[dict[str, Any]]) -> str:
    return _table(rows, INTEGRATION_COLUMNS) if rows else "No integrations in this project."


def _catalog_human(data: Any) -> str:
    if isinstance(data, dict):  # one entry
        out = _fields(data, ENTRY_FIELDS)
        actions = [a.get("name") for a in data.get("actions") or []]
        fields = [f.get("name") for f in data.get("fields") or []]
        out += f"\n{'actions:':<16} {_clean(', '.join(actions) or None)}"
        return out + f"\n{'fields:':<16} {_clean(', '.join(fields) or None)}"
    return _table(data, CATALOG_COLUMNS) if data else "No catalog entries match."


def _install_human(data: dict[str, Any]) -> str:
    return (f"{_clean(data.get('install_url'))}\n"
            f"{_clean(data.get('message'))} ({_clean(data.get('provider'))}, "
            f"{_clean(data.get('setup_type'))})")


def _disconnect_human(data: dict[str, Any]) -> str:
    out = f"{_clean(data.get('provider'))} ({_clean(data.get('id'))}) is disconnected"
    if "revoked" in data:
        revoked = data.get("revoked") or []
        out += ("\nrevoked at the provider: " + _clean(", ".join(revoked)) if revoked
                else f"\nnot revoked at the provider: {_clean(data.get('revocation_error'))}")
    return out


# -- connection --------------------------------------------------------------------------------

def _safe_url(url: str) -> str:
    """The URL without any user:password part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _config(args: argparse.Namespace) -> tuple[str, str, str] | str:
    """(url, key, project), or what is missing."""
    url = (args.api_url or os.environ.get("BROKER_API_URL", "").strip() or DEFAULT_API_URL)
    key = args.api_key or os.environ.get("BROKER_API_KEY", "").strip()
    project = args.project or os.environ.get("BROKER_PROJECT", "").strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return "the API URL is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"the API URL must be http(s)://host[:port], not {_safe_url(url)!r}"
    if not key:
        return "no API key: give --api-key or set BROKER_API_KEY"
    if not project:
        return "no project: give --project or set BROKER_PROJECT"
    return url, key, project


def _run(args: argparse.Namespace, work: Callable[[Any], Any],
         human: Callable[[Any], str]) -> int:
    from broker.client import BrokerClient, BrokerConnectionError, BrokerError

    config = _config(args)
    if isinstance(config, str):
        return _error(config, EXIT_USAGE)
    url, key, project = config
    try:
        with BrokerClient(url, api_key=key, project=project, timeout=args.timeout) as client:
            data = work(client)
    except BrokerError as exc:
        code = EXIT_UNREACHABLE if isinstance(exc, BrokerConnectionError) else EXIT_API_ERROR
        return _error(str(exc).replace(key, "<api key>"), code)
    return _emit(args, data, human)


# -- commands ----------------------------------------------------------------------------------

def cmd_list(settings: Any, args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.list_integrations(), _integrations_table)


def cmd_catalog(settings: Any, args: argparse.Namespace) -> int:
    if args.provider:
        if args.q is not None or args.category is not None or args.status is not None:
            return _error("give a PROVIDER or filters, not both", EXIT_USAGE)
        return _run(args, lambda c: c.catalog_entry(args.provider), _catalog_human)
    return _run(args, lambda c: c.catalog(q=args.q, category=args.category,
                                          status=args.status), _catalog_human)


def cmd_install_url(settings: Any, args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.install_url(args.provider, return_url=args.return_url),
                _install_human)


def cmd_lifecycle(settings: Any, args: argparse.Namespace) -> int:
    from broker.client import UNSET

    changes: dict[str, Any] = {}
    if args.status is not None:
        changes["status"] = args.status
    if args.clear_display_name:
        changes["display_name"] = None
    elif args.display_name is not None:
        changes["display_name"] = args.display_name
    if args.sidebar is not None:
        changes["sidebar_enabled"] = args.sidebar
    if args.settings is not None:
        changes["settings"] = args.settings
    if args.allowed_actions is not None:
        changes["allowed_actions"] = args.allowed_actions
    if not changes:
        return _error("nothing to update: give --status, --display-name, "
                      "--clear-display-name, --sidebar, --settings or --allowed-actions",
                      EXIT_USAGE)
    changes.setdefault("display_name", UNSET)
    return _run(args, lambda c: c.update_lifecycle(args.provider, **changes),
                lambda d: _fields(d, INTEGRATION_FIELDS))


def cmd_disconnect(settings: Any, args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.disconnect(args.provider, revoke=args.revoke),
                _disconnect_human)


# -- argument types ----------------------------------------------------------------------------

def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError("expected true or false")


def _json_object(value: str) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"a\":1}'") from None
    if not isinstance(doc, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"a\":1}'")
    return doc


def _names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds") from None
    if not 0 < seconds <= 600:
        raise argparse.ArgumentTypeError("expected 0 < seconds <= 600")
    return seconds


# -- parser ------------------------------------------------------------------------------------

class _Formatter(argparse.HelpFormatter):
    """Wraps the description as usual; keeps the epilog's lines (the exit code table)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _epilog(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.epilog, p.formatter_class = EPILOG, _Formatter
    return p


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _epilog(p)
    p.add_argument("--api-url", metavar="URL",
                   help=f"the broker's base URL (env BROKER_API_URL; default {DEFAULT_API_URL})")
    p.add_argument("--api-key", metavar="KEY",
                   help="the project's API key (env BROKER_API_KEY, preferred)")
    p.add_argument("--project", metavar="ID", help="the project id (env BROKER_PROJECT)")
    p.add_argument("--timeout", type=_timeout, default=10.0, metavar="S",
                   help="seconds to wait for the broker (default 10)")
    p.add_argument("--json", action="store_true", help="print the response data as JSON")
    return p


def add_client_commands(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Declare ``broker integrations ...`` with ``broker.cli``'s ``cmd`` helper."""
    top = cmd("integrations", lambda *_: EXIT_OK,
              "the v1 Integrations API of a running broker: list, catalog, install URLs, "
              "lifecycle, disconnect", sub)
    _epilog(top)
    actions = top.add_subparsers(dest="integrations_command", required=True, metavar="ACTION")

    _common(cmd("list", cmd_list, "list the project's integrations, disconnected ones "
                "included (scope read)", actions))

    p = _common(cmd("catalog", cmd_catalog, "browse the catalog, installed and available, "
                    "or show one entry (scope read)", actions))
    p.add_argument("provider", nargs="?", metavar="PROVIDER",
                   help="show this entry in full instead of listing")
    p.add_argument("-q", "--query", dest="q", metavar="TEXT",
                   help="free text in the slug, name, category or description")
    p.add_argument("--category", help="e.g. communication, commerce")
    p.add_argument("--status", choices=STATUS_FILTERS,
                   help="available (never installed or disconnected), installed (active or "
                   "paused), active, paused or disconnected")

    p = _common(cmd("install-url", cmd_install_url, "get a URL a person opens in a browser to "
                    "install PROVIDER (scope integrations:write)", actions))
    p.add_argument("provider", metavar="PROVIDER", help="the provider slug, e.g. slack")
    p.add_argument("--return-url", metavar="URL",
                   help="where the browser goes afterwards (must be on the broker's "
                   "BROKER_RETURN_URL_ALLOWLIST)")

    p = _common(cmd("lifecycle", cmd_lifecycle, "change an installed integration: status, "
                    "display name, sidebar, settings, allowed actions; only the options given "
                    "change (scope integrations:write)", actions))
    p.add_argument("provider", metavar="PROVIDER", help="the provider slug, e.g. shopify")
    p.add_argument("--status", choices=STATUSES,
                   help="active, paused or disconnected (disconnected destroys the "
                   "credential, like `disconnect`)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--display-name", metavar="NAME",
                       help="the name shown instead of the catalog's")
    names.add_argument("--clear-display-name", action="store_true",
                       help="go back to the catalog's name")
    p.add_argument("--sidebar", type=_bool, metavar="true|false",
                   help="show this integration's panel in the inbox sidebar")
    p.add_argument("--settings", type=_json_object, metavar="JSON",
                   help="a JSON object merged into the integration's settings")
    p.add_argument("--allowed-actions", type=_names, metavar="A,B",
                   help="comma list of the actions the agent may perform (replaces the "
                   "list; '' allows none); see `catalog PROVIDER`")

    p = _common(cmd("disconnect", cmd_disconnect, "disconnect an integration: destroy its "
                    "credential, hide it from the sidebar (scope integrations:write)",
                    actions))
    p.add_argument("provider", metavar="PROVIDER", help="the provider slug, e.g. slack")
    p.add_argument("--revoke", action="store_true",
                   help="revoke the grant at the provider first, where it supports that")
