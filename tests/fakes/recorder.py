"""A provider stand-in that answers each (method, path) with a canned response and records
every request: the contract test points every declared URL of a provider at it and serves
the provider's documented responses from tests/providers/fixtures/<slug>/."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


@dataclass
class Recorder:
    responses: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def serve(self, method: str, path: str, status: int, body: Any) -> None:
        self.responses[(method, path)] = (status, body)

    def reset(self) -> None:
        self.responses.clear()
        self.requests.clear()

    def at(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


def make_recorder() -> tuple[Starlette, Recorder]:
    recorder = Recorder()

    async def anything(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", "replace")
        content_type = request.headers.get("content-type", "")
        if "json" in content_type and raw:
            body: Any = json.loads(raw)
        else:
            body = dict(parse_qsl(raw, keep_blank_values=True))
        recorder.requests.append({
            "method": request.method, "path": request.url.path,
            "query": dict(request.query_params), "headers": dict(request.headers),
            "content_type": content_type, "body": body, "raw": raw})
        status, answer = recorder.responses.get((request.method, request.url.path),
                                                (404, {"error": "not_served"}))
        if isinstance(answer, str):
            return PlainTextResponse(answer, status_code=status)
        return JSONResponse(answer, status_code=status)

    app = Starlette(routes=[Route("/{path:path}", anything,
                                  methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])
    return app, recorder
