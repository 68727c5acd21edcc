"""aqueduct.http routes with a request model: bodies validated in the
worker (422 with the field errors), and GET /openapi.json describing every
route. Every wait is bounded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aqueduct.http import Route
from test_http import call, service

SERVICE = Path(__file__).parent / "validated_service.py"


def test_a_body_that_fits_reaches_the_handler_as_its_model():
    with service(SERVICE) as (port, _):
        status, _, body = call(port, {"x": 2, "y": 3}, path="/sum")
        assert (status, json.loads(body)) == (200, {"total": 5})
        assert call(port, {"x": 4}, path="/raw")[0] == 200, "a route without a model"


@pytest.mark.parametrize(
    ("sent", "loc", "kind"),
    [
        ({"y": 1}, ["x"], "missing"),
        ({"x": "many"}, ["x"], "int_parsing"),
        ({"x": 1, "tags": ["a", "b", "c", "d"]}, ["tags"], "too_long"),
        (b"{not json", [], "json_invalid"),
    ],
)
def test_a_body_that_does_not_fit_gets_422_naming_the_field(sent, loc, kind):
    with service(SERVICE) as (port, _):
        status, headers, body = call(port, sent, path="/sum")
        assert status == 422, body
        assert headers["content-type"] == "application/json"
        answer = json.loads(body)
        assert answer["type"] == "RequestValidationError"
        assert [(d["loc"], d["type"]) for d in answer["detail"]] == [(loc, kind)]
        assert call(port, {"x": 1}, path="/sum")[0] == 200, "the flow serves on"


def test_openapi_json_describes_every_route_its_models_and_errors():
    with service(SERVICE) as (port, _):
        status, headers, body = call(port, path="/openapi.json", method="GET")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {"/sum", "/raw", "/health"}
    post = doc["paths"]["/sum"]["post"]
    request = post["requestBody"]["content"]["application/json"]["schema"]
    assert request == {"$ref": "#/components/schemas/Point"}
    schemas = doc["components"]["schemas"]
    assert schemas["Point"]["required"] == ["x"]
    assert set(schemas["Point"]["properties"]) == {"x", "y", "tags"}
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Total"}
    assert {"400", "413", "422", "500", "503", "504"} <= set(post["responses"])
    assert "requestBody" not in doc["paths"]["/raw"]["post"]
    assert "422" not in doc["paths"]["/raw"]["post"]["responses"]
    assert schemas["Error"]["required"] == ["error", "type"]


def test_a_route_model_must_be_a_pydantic_model():
    with pytest.raises(TypeError, match="pydantic"):
        Route(lambda r: r, lambda t: t, request_model=dict)
