"""What an HTTP route's functions get and give (``aqueduct.http``): a
worker's ``task_from_request`` gets a :class:`Request`, its
``response_from_task`` may return a :class:`Response`. Defined apart from
the server so that workers import them without it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from .._core import REQUEST_ID_HEADER

__all__ = ["PartToChunk", "Request", "Response", "ResponseFromTask", "TaskFromRequest"]


class Request:
    """An HTTP request, as ``task_from_request`` gets it (in a worker).
    Header names are lower-case. ``request_id`` is its ``X-Request-ID``
    (the client's, or one the server made); the task made of it gets it
    too, as ``task.request_id``."""

    __slots__ = ("body", "headers", "method", "model", "path", "query", "request_id")

    def __init__(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.request_id: str = headers.get(REQUEST_ID_HEADER, "")
        #: The body as the route's ``request_model``, validated (None when
        #: the route has none).
        self.model: Any = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def query_params(self) -> dict[str, list[str]]:
        return parse_qs(self.query)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} ({len(self.body)} bytes)>"


TaskFromRequest = Callable[[Request], Any]
ResponseFromTask = Callable[[Any], Any]
#: A streaming route's part -> its chunk: bytes as they are, anything else
#: (text, or JSON for other objects) as one Server-Sent Event.
PartToChunk = Callable[[Any], Any]


@dataclass
class Response:
    """What ``response_from_task`` may return for more than a body: a status
    and headers. ``body`` is bytes, a str, or anything JSON can encode."""

    body: Any = b""
    status: int = 200
    #: A dict, or a list of ``(name, value)`` pairs when a name repeats
    #: (two ``Set-Cookie``).
    headers: dict[str, str] | list[tuple[str, str]] = field(default_factory=dict)
