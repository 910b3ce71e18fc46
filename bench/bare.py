"""The baseline: a bare Starlette endpoint answering a credential-sized JSON body."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

BODY = {"data": {"provider": "acme", "setup_type": "oauth", "access_token": "x" * 40,
                 "token_type": "bearer", "expires_at": None, "scopes": ["read"],
                 "metadata": {}, "allowed_actions": []}}


async def credential(_request: object) -> JSONResponse:
    return JSONResponse(BODY)


app = Starlette(routes=[Route("/credentials", credential)])
