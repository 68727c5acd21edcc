"""``GET /openapi.json`` of ``aqueduct.http``: an OpenAPI 3.1 description of
every route — its body's schema when it has a ``request_model``, its
answers and the error shape — built once when the server starts and then
served by Rust."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["ERROR_SCHEMA", "DescribedRoute", "document"]


class DescribedRoute(Protocol):
    """What the document says of a route (``aqueduct.http.Route`` has it)."""

    @property
    def task_from_request(self) -> Any: ...
    @property
    def stream(self) -> Any: ...
    @property
    def request_model(self) -> Any: ...
    @property
    def response_model(self) -> Any: ...
    @property
    def summary(self) -> str | None: ...


#: What every error answer is.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "type"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong"},
        "type": {"type": "string", "description": "the exception class or error kind"},
        "detail": {
            "type": "array",
            "description": "422 only: the fields that do not fit the route's model",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}

#: The errors any route may answer, and why.
ROUTE_ERRORS = {
    "400": "the request is malformed, or task_from_request refused it",
    "413": "the body is over the server's body_limit",
    "500": "a handler raised, or a worker died",
    "503": "the queue is full or the flow cannot serve",
    "504": "the request's timeout passed",
}


def _schema_of(model: Any, schemas: dict[str, Any]) -> dict[str, str]:
    """A $ref to ``model``'s schema, added (with its definitions) to ``schemas``."""
    schema = dict(model.model_json_schema(ref_template="#/components/schemas/{model}"))
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def document(
    routes: Mapping[str, DescribedRoute], title: str, stream_content_type: str, *, needs_key: bool
) -> dict[str, Any]:
    """The OpenAPI document of ``routes``."""
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, Any] = {}
    for path, route in routes.items():
        if route.stream:
            content = {stream_content_type: {"schema": {"type": "string"}}}
            answer = "the parts as they come, then the final response's body"
        else:
            schema = (
                {} if route.response_model is None else _schema_of(route.response_model, schemas)
            )
            content = {"application/json": {"schema": schema}}
            answer = "what response_from_task made"
        responses = {"200": {"description": answer, "content": content}}
        responses |= {status: _error(why) for status, why in ROUTE_ERRORS.items()}
        operation: dict[str, Any] = {
            "summary": route.summary or getattr(route.task_from_request, "__name__", path),
            "operationId": path.strip("/").replace("/", "_") or "root",
            "responses": responses,
        }
        if route.request_model is not None:
            body = _schema_of(route.request_model, schemas)
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
            responses["422"] = _error("the body does not fit the route's model")
        if needs_key:
            responses["401"] = _error("no valid API key")
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
        paths[path] = {"post": operation}
    paths["/health"] = {
        "get": {
            "summary": "whether the flow serves",
            "operationId": "health",
            "responses": {"200": {"description": "it serves"}, "503": _error("it cannot")},
        }
    }
    components: dict[str, Any] = {"schemas": schemas}
    if needs_key:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": components,
    }
