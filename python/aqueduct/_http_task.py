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
        return self._route(kind)[0](Request(method, path, query, headers, body))

    def response(self, task: Any, kind: int) -> bytes:
        """The ``KIND_HTTP_RESPONSE`` payload for a handled task."""
        made = self._route(kind)[1](task)
        if not isinstance(made, Response):  # a body: the common case, kept short
            body, content_type = _body_of(made)
            return _core.encode_http_response(200, [(b"content-type", content_type)], body)
        body, content_type = _body_of(made.body)
        headers = {k.lower(): str(v) for k, v in made.headers.items()}
        headers.setdefault("content-type", content_type.decode())
        pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        return _core.encode_http_response(int(made.status), pairs, body)


_JSON = b"application/json"
_BYTES = b"application/octet-stream"
_TEXT = b"text/plain; charset=utf-8"


def _body_of(value: Any) -> tuple[bytes, bytes]:
    """Bytes for a response body, and the content type they are."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), _BYTES
    if isinstance(value, str):
        return value.encode(), _TEXT
    return json.dumps(value).encode(), _JSON
