"""The few HTML pages a person sees during an install. Self-contained: no scripts, no
third-party resources, and headers that keep them out of frames, caches and referrers."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from starlette.responses import HTMLResponse, Response

from broker.spec import Provider

STYLE = ("body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
         "color:#1c1c1c}label{display:block;margin:1rem 0 .25rem;font-weight:600}"
         "input,select{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}"
         "button{margin-top:1.5rem;padding:.6rem 1.2rem;font-size:1rem}"
         ".error{color:#b00020}.hint{color:#555;font-size:.9rem}")


def browser_headers(public_url: str) -> dict[str, str]:
    # form-action covers the redirect that follows a form post (to the provider's consent).
    form_action = "'self' https:" + (" http:" if public_url.startswith("http:") else "")
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": (f"default-src 'none'; style-src 'unsafe-inline'; "
                                    f"form-action {form_action}; frame-ancestors 'none'; "
                                    "base-uri 'none'"),
    }


def _page(title: str, body: str, status: int, public_url: str) -> Response:
    html = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>")
    return HTMLResponse(html, status_code=status, headers=browser_headers(public_url))


def message(title: str, text: str, *, status: int, public_url: str) -> Response:
    return _page(title, f"<h1 id=title>{escape(title)}</h1><p id=message>{escape(text)}</p>",
                 status, public_url)


def form(provider: Provider, *, action: str, values: Mapping[str, str],
         errors: Mapping[str, str], notice: str | None, status: int, public_url: str
         ) -> Response:
    rows = []
    for f in provider.fields:
        value = "" if f.secret else values.get(f.name, "")
        if f.choices:
            options = "".join(
                f"<option{' selected' if c == value else ''}>{escape(c)}</option>"
                for c in f.choices)
            control = f"<select id={f.name} name={f.name}>{options}</select>"
        else:
            kind = "password" if f.secret else "text"
            placeholder = f" placeholder='{escape(f.example)}'" if f.example else ""
            control = (f"<input id={f.name} name={f.name} type={kind} autocomplete=off "
                       f"value='{escape(value)}'{placeholder}>")
        error = errors.get(f.name)
        rows.append(f"<label for={f.name}>{escape(f.label)}</label>{control}"
                    + (f"<p class=hint>{escape(f.description)}</p>" if f.description else "")
                    + (f"<p class=error id=error-{f.name}>{escape(error)}</p>" if error else ""))
    banner = f"<p class=error id=notice>{escape(notice)}</p>" if notice else ""
    body = (f"<h1 id=title>Connect {escape(provider.name)}</h1>"
            f"<p>{escape(provider.description)}</p>{banner}"
            f"<form method=post action='{escape(action)}'>{''.join(rows)}"
            f"<button id=connect type=submit>Connect</button></form>")
    return _page(f"Connect {provider.name}", body, status, public_url)
