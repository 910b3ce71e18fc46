"""Prometheus metrics, in a registry of the app's own (no process-global collectors, so two
apps in one process, as in tests, never share counts). Labels carry route templates and
provider slugs, never values from a request."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("broker_http_requests_total", "HTTP requests",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("broker_http_request_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY, registry=r)
        self.installs = Counter("broker_installs_total", "Installs by outcome",
                                ["provider", "outcome"], registry=r)
        self.refreshes = Counter("broker_refreshes_total", "Token refreshes by outcome",
                                 ["provider", "outcome"], registry=r)
        self.provider_calls = Histogram("broker_provider_call_seconds",
                                        "Provider token endpoint and API calls",
                                        ["provider", "call"], buckets=LATENCY, registry=r)
        self.lock_waits = Histogram("broker_refresh_lock_wait_seconds",
                                    "Time readers waited for another process's refresh",
                                    buckets=LATENCY, registry=r)
        self.cache = Counter("broker_handout_cache_total", "Credential hand-outs by source",
                             ["source"], registry=r)


async def serve_metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
