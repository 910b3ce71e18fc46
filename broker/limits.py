"""Rate limits: failed authentication per client address, and the browser routes.

Counters live in the state store (Redis when configured, so every instance counts
together), in fixed one-minute windows. When the store is unreachable the limits are not
enforced: they guard against guessing and floods, and must not take the service down with
them. Behind a proxy, list it in ``BROKER_FORWARDED_ALLOW_IPS`` so that each client is
counted under the address X-Forwarded-For gives; otherwise every client shares the proxy's.
"""

from __future__ import annotations

import logging

from starlette.requests import Request

from broker.errors import ApiError
from broker.state import StateUnavailable

log = logging.getLogger(__name__)

WINDOW = 60
AUTH_FAILURES = 50  # failed key or token attempts per address and minute
BROWSER_REQUESTS = 120  # connect pages, form posts and callbacks per address and minute


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self) -> None:
        super().__init__("Too many requests from this address; try again in a minute.")


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def refuse_if_blocked(request: Request) -> None:
    """Before checking a credential: an address over its failure budget is refused, right
    or wrong, until the window ends (otherwise guessing would just go on)."""
    try:
        failures = await request.app.state.state_store.count(f"authfail:{_address(request)}")
    except StateUnavailable:
        return
    if failures >= AUTH_FAILURES:
        raise RateLimited()


async def record_failure(request: Request) -> None:
    try:
        failures = await request.app.state.state_store.hit(
            f"authfail:{_address(request)}", WINDOW)
    except StateUnavailable:
        return
    if failures == AUTH_FAILURES:
        log.warning("authentication failures over the limit; address blocked for a minute",
                    extra={"client": _address(request)})


async def over_browser_limit(request: Request) -> bool:
    try:
        hits = await request.app.state.state_store.hit(f"browser:{_address(request)}", WINDOW)
    except StateUnavailable:
        return False
    return hits > BROWSER_REQUESTS
