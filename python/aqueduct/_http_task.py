"""What a worker does for tasks that came from the Rust HTTP server
(``aqueduct.http.serve``): the first step's worker makes the request a task
with the server's ``task_from_request`` before its handler, and whichever
worker sends the task to its result queue makes the response with
``response_from_task`` after its handler. Errors become HTTP statuses there
too (see ``encode_error``), so the server runs no Python per request."""

from __future__ import annotations

import json
from typing import Any

from . import _core
from .http import Request, Response, ResponseFromTask, TaskFromRequest

__all__ = ["HttpEnds"]


class HttpEnds:
    """A server's pair of functions per route, in a worker; a message's
    ``kind`` says its route."""

    def __init__(self, routes: list[tuple[TaskFromRequest, ResponseFromTask]]) -> None:
        self._routes = routes

    def _route(self, kind: int) -> tuple[TaskFromRequest, ResponseFromTask]:
        route = (kind & _core.HTTP_ROUTE_MASK) >> _core.HTTP_ROUTE_SHIFT
        if route >= len(self._routes):
            raise ValueError(f"the server has no route {route}")
        return self._routes[route]

    def task(self, payload: bytes, kind: int, arenas: list[_core.SharedArena]) -> Any:
        """The task for a ``KIND_HTTP_REQUEST`` payload (a big body is read
        from ``arenas``, where the server put it); raises what
        ``task_from_request`` raised (the caller gets a 400 saying it)."""
        method, path, query, headers, body, body_ref = _core.decode_http_request(payload)
        if body is None:
            assert body_ref is not None
            arena, block, offset, length = body_ref
            # a copy: the server frees the block once it has the answer
            body = bytes(arenas[arena].view(block, offset, length))
        request = Request(
            method=method.decode("latin-1"),
            path=path.decode("latin-1"),
            query=query.decode("latin-1"),
            headers={name.decode("latin-1"): value.decode("latin-1") for name, value in headers},
            body=body,
        )
        return self._route(kind)[0](request)

    def response(self, task: Any, kind: int) -> bytes:
        """The ``KIND_HTTP_RESPONSE`` payload for a handled task."""
        made = self._route(kind)[1](task)
        response = made if isinstance(made, Response) else Response(made)
        body, content_type = _body_of(response.body)
        headers = {k.lower(): v for k, v in response.headers.items()}
        headers.setdefault("content-type", content_type)
        pairs = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
        return bytes(_core.encode_http_response(int(response.status), pairs, body))


def _body_of(value: Any) -> tuple[bytes, str]:
    """Bytes for a response body, and the content type they are."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), "application/octet-stream"
    if isinstance(value, str):
        return value.encode(), "text/plain; charset=utf-8"
    return json.dumps(value).encode(), "application/json"
