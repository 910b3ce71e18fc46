"""``/openapi.json`` and the route table describe the same API."""

from __future__ import annotations

import re

import pytest

from broker.app import routes
from broker.auth import route_scope
from tests.conftest import Harness

pytestmark = pytest.mark.anyio


async def test_spec_and_routes_agree(harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    served = {(r.path, m.lower()) for r in routes() for m in r.methods if m != "HEAD"}
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served == described


async def test_spec_names_parameters_and_scopes_as_the_code_does(harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    params = spec["components"]["parameters"]
    for route in routes():
        for method in route.methods - {"HEAD"}:
            op = spec["paths"][route.path][method.lower()]
            names = {params[p["$ref"].rsplit("/", 1)[1]]["name"] if "$ref" in p else p["name"]
                     for p in op.get("parameters", []) if "$ref" in p or p["in"] == "path"}
            assert names == set(re.findall(r"\{(\w+)\}", route.path)), route.path
            scope = route_scope(route.endpoint)
            if scope == "service":
                assert op["security"] == [{"ServiceToken": []}]
            elif scope:
                assert op["security"] == [{"ApiKey": []}]
                assert f"`{scope}`" in op["description"]
            else:
                assert op["security"] == []
    assert "projectId" in params


async def test_documented_error_statuses_cover_what_the_routes_return(
        harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        for op in ops.values():
            if op["security"]:
                assert {"401", "404"} <= set(op["responses"]), path
                assert any(code.startswith("2") for code in op["responses"]), path


async def test_links_name_operations_and_parameters_that_exist(harness: Harness) -> None:
    """The OpenAPI links (IV-01's stateful phase walks them): each names an operation of this
    document and only path parameters that operation takes."""
    spec = (await harness.client.get("/openapi.json")).json()
    operations = {op["operationId"]: (path, op) for path, ops in spec["paths"].items()
                  for op in ops.values()}
    links = [link for _, op in operations.values() for response in op["responses"].values()
             for link in response.get("links", {}).values()]
    assert links
    for link in links:
        assert link["operationId"] in operations, link
        path, _ = operations[link["operationId"]]
        assert set(link["parameters"]) == set(re.findall(r"\{(\w+)\}", path)), link
