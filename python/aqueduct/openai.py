"""OpenAI-compatible generation from the Rust HTTP front: what the official
``openai`` client (and every tool built on it) talks to.

    from aqueduct.openai import OpenAI

    serve(flow, routes=OpenAI("my-model").routes())

answers ``POST /v1/chat/completions`` and ``POST /v1/completions``
(streamed or not, as each request asks) and ``GET /v1/models``. The front
checks each request (its ``model``, ``messages`` or ``prompt``, ``n``,
``max_tokens``, ``temperature``, ``top_p``, ``stream``, ``stream_options``;
unknown fields are ignored) and answers a misfit with the API's error
object; the workers get a :class:`ChatRequest`, make a task of it
(``task_from_request``, by default a :class:`Completion`), and the handler
``emit``\\ s the text as it writes it, one part per token. The front wraps
each part in a chunk (the same ``id``, ``created`` and ``model`` on every
one; a chat stream starts with the role), then ends the stream with the
``finish_reason`` chunk, the usage chunk when ``stream_options.include_usage``
asks for it, and ``data: [DONE]``; an idle stream gets a ``: ping``
comment every ``ping`` seconds. A request that does not stream gets the
whole object with the text the handler emitted. A client that leaves
cancels its task: ``emit`` returns False from then on. A full queue is a
429 with ``Retry-After``.

The handler's task tells how the generation ended: ``finish_reason``
(``"length"`` when it wrote ``max_tokens`` tokens, ``"stop"`` otherwise,
unless it sets its own) and ``prompt_tokens`` / ``completion_tokens``
(``completion_tokens`` counts the parts emitted; ``prompt_tokens`` is a
count of the prompt's words unless the handler, which has the tokenizer,
sets it). A task of another class gives them through ``response_from_task``
returning a :class:`Result`.

``Embeddings(model).routes()`` serves ``POST /v1/embeddings``: the
worker's task (by default an :class:`Embedding`, the inputs of one
request) gets its ``embeddings`` from the handler, a row per input; the
front writes them as floats or base64 as the request asks.
"""

from __future__ import annotations

import array
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _core
from ._ipc.http_messages import Request
from .http import Route
from .task import BaseTask

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ChatRequest",
    "Completion",
    "Embedding",
    "EmbeddingRequest",
    "Embeddings",
    "OpenAI",
    "Result",
    "vectors_answer",
]

#: The tokens a request that gives no ``max_tokens`` may get.
DEFAULT_MAX_TOKENS = 256
#: How often an idle stream is pinged, in seconds.
DEFAULT_PING = 15.0
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"


class ChatRequest:
    """A request to ``/v1/chat/completions`` or ``/v1/completions``, as
    ``task_from_request`` gets it in a worker (the front has checked it)."""

    __slots__ = (
        "chat",
        "fields",
        "max_tokens",
        "messages",
        "prompt",
        "request_id",
        "seed",
        "stop",
        "stream",
        "temperature",
        "top_p",
    )

    def __init__(self, request: Request) -> None:
        fields: dict[str, Any] = json.loads(request.body)
        #: The whole body, unknown fields too (sampling fields pass through).
        self.fields = fields
        self.request_id = request.request_id
        self.chat = "messages" in fields
        #: The chat's messages (None for a completion).
        self.messages: list[dict[str, Any]] | None = fields.get("messages")
        #: The text to continue: the completion's prompt, or the chat's
        #: message contents one per line.
        self.prompt: str = _prompt(fields)
        limit = fields.get("max_completion_tokens") or fields.get("max_tokens")
        self.max_tokens: int = int(limit) if limit else DEFAULT_MAX_TOKENS
        self.temperature: float | None = fields.get("temperature")
        self.top_p: float | None = fields.get("top_p")
        stop = fields.get("stop")
        self.stop: list[str] = [stop] if isinstance(stop, str) else list(stop or [])
        self.seed: int | None = fields.get("seed")
        self.stream: bool = bool(fields.get("stream"))

    def __repr__(self) -> str:
        kind = "chat" if self.chat else "completion"
        return f"<ChatRequest {kind} {self.request_id} max_tokens={self.max_tokens}>"


def _prompt(fields: dict[str, Any]) -> str:
    if "messages" in fields:
        return "\n".join(_text(message.get("content")) for message in fields["messages"])
    prompt = fields.get("prompt", "")
    return prompt[0] if isinstance(prompt, list) else str(prompt)


def _text(content: Any) -> str:
    """A message's content as text (a list of parts: its text parts)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class Completion(BaseTask):
    """The default task of an OpenAI-compatible route: the request's
    parameters, and what the handler wrote (``emit`` adds each part to
    ``text`` and counts it)."""

    def __init__(self, request: ChatRequest) -> None:
        super().__init__()
        self.prompt = request.prompt
        self.messages = request.messages
        self.max_tokens = request.max_tokens
        self.temperature = request.temperature
        self.top_p = request.top_p
        self.stop = request.stop
        self.seed = request.seed
        #: The request's other fields (sampling parameters the handler may know).
        self.fields = request.fields
        self.text = ""
        self.completion_tokens = 0
        self.prompt_tokens = len(request.prompt.split())
        #: ``"stop"``, ``"length"``, or the handler's own (None: decided at the end).
        self.finish_reason: str | None = None

    def emit(self, part: Any) -> bool:
        self.text += part.decode() if isinstance(part, bytes) else str(part)
        self.completion_tokens += 1
        return super().emit(part)


@dataclass(frozen=True)
class Result:
    """How a generation ended, for a task that is not a :class:`Completion`
    (what its route's ``response_from_task`` returns). ``text``: the whole
    text, needed only for requests that do not stream."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _summary(result: Result, stream: bool) -> bytes:
    return _core.openai_summary(
        None if stream else result.text,
        result.finish_reason,
        max(0, int(result.prompt_tokens)),
        max(0, int(result.completion_tokens)),
    )


def _result_of(task: Any) -> Result:
    """A Completion's result (its finish reason decided if it gave none)."""
    reason = task.finish_reason
    if reason is None:
        reason = "length" if task.completion_tokens >= task.max_tokens else "stop"
    return Result(task.text, reason, task.prompt_tokens, task.completion_tokens)


class _Ends:
    """A route's worker functions: the request made a task by the user's
    function, the task's end made a summary, a part made text."""

    def __init__(
        self,
        make: Callable[[ChatRequest], Any],
        respond: Callable[[Any], Result] | None,
        to_text: Callable[[Any], str],
    ) -> None:
        self._make, self._respond, self._to_text = make, respond, to_text

    def task_from_request(self, request: Request) -> Any:
        chat = ChatRequest(request)
        task = self._make(chat)
        task.openai_stream = chat.stream  # whether the summary carries the text
        return task

    def response_from_task(self, task: Any) -> bytes:
        result = _result_of(task) if self._respond is None else self._respond(task)
        return _summary(result, bool(getattr(task, "openai_stream", False)))

    def part_to_chunk(self, part: Any) -> bytes:
        # the summary (bytes) passes as it is; a part is its text
        if isinstance(part, bytes):
            return part
        return self._to_text(part).encode()


class OpenAI:
    """The OpenAI-compatible routes of a generative flow, for ``routes=``
    of ``aqueduct.http.serve``, ``Server`` or ``Service``.

    ``model``: the name clients ask for (another is a 404). ``task_from_request``:
    a :class:`ChatRequest` -> the task (default: :class:`Completion`).
    ``response_from_task``: the task -> a :class:`Result` (needed for a task
    that is not a Completion). ``part_to_text``: what text a part stands for
    (default ``str``; bytes parts are UTF-8 text as they are). ``chat`` and
    ``completions``: which endpoints to serve. ``ping``: seconds between the
    comments an idle stream gets."""

    def __init__(
        self,
        model: str,
        task_from_request: Callable[[ChatRequest], Any] = Completion,
        response_from_task: Callable[[Any], Result] | None = None,
        part_to_text: Callable[[Any], str] = str,
        *,
        chat: bool = True,
        completions: bool = True,
        ping: float = DEFAULT_PING,
    ) -> None:
        if not isinstance(model, str) or not model or not model.isprintable():
            raise ValueError(f"model must be a printable name, got {model!r}")
        if not (chat or completions):
            raise ValueError("serve chat, completions, or both")
        if not ping > 0:
            raise ValueError(f"ping must be > 0 seconds, got {ping}")
        self.model, self.ping = model, float(ping)
        self._ends = _Ends(task_from_request, response_from_task, part_to_text)
        self._paths = [p for p, on in ((CHAT_PATH, chat), (COMPLETIONS_PATH, completions)) if on]

    def routes(self) -> dict[str, Route]:
        """Path -> Route: the endpoints served."""
        protocols = {CHAT_PATH: "openai.chat", COMPLETIONS_PATH: "openai.completions"}
        ends = self._ends
        return {
            path: Route(
                ends.task_from_request,
                ends.response_from_task,
                stream=ends.part_to_chunk,
                protocol=protocols[path],
                model=self.model,
                ping=self.ping,
                summary=f"OpenAI-compatible {path.rsplit('/', 1)[-1]} of {self.model}",
            )
            for path in self._paths
        }


class EmbeddingRequest:
    """A request to ``/v1/embeddings``, as ``task_from_request`` gets it in
    a worker (the front has checked it). ``inputs``: a list of texts, or of
    token id lists."""

    __slots__ = ("dimensions", "fields", "inputs", "request_id")

    def __init__(self, request: Request) -> None:
        fields: dict[str, Any] = json.loads(request.body)
        #: The whole body, unknown fields too.
        self.fields = fields
        self.request_id = request.request_id
        given = fields["input"]
        if isinstance(given, str) or (given and isinstance(given[0], int)):
            given = [given]
        self.inputs: list[str] | list[list[int]] = given
        self.dimensions: int | None = fields.get("dimensions")

    def __repr__(self) -> str:
        return f"<EmbeddingRequest {self.request_id} inputs={len(self.inputs)}>"


class Embedding(BaseTask):
    """The default task of ``/v1/embeddings``: the inputs of one request
    (requests are batched through the step), and their vectors, which the
    handler sets: ``embeddings``, a 2-D array or a list of equal-length
    lists of numbers, a row per input. ``prompt_tokens`` counts the inputs'
    words (or token ids) unless the handler sets it."""

    def __init__(self, request: EmbeddingRequest) -> None:
        super().__init__()
        self.inputs = request.inputs
        self.dimensions = request.dimensions
        self.fields = request.fields
        self.embeddings: Any = None
        self.prompt_tokens = sum(
            len(i.split()) if isinstance(i, str) else len(i) for i in request.inputs
        )


def vectors_answer(embeddings: Any, prompt_tokens: int) -> bytes:
    """The answer of an embeddings route: ``embeddings`` (a 2-D array, or a
    list of equal-length lists of numbers) as float32 rows."""
    if hasattr(embeddings, "__array__") or hasattr(embeddings, "shape"):
        import numpy

        rows = numpy.ascontiguousarray(embeddings, dtype="<f4")
        if rows.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (a row per input), not {rows.shape}")
        values, shape = rows.tobytes(), rows.shape
    else:
        rows_list = [list(row) for row in embeddings]
        width = len(rows_list[0]) if rows_list else 0
        if any(len(row) != width for row in rows_list):
            raise ValueError("embeddings must be rows of one length")
        flat = array.array("f", (float(x) for row in rows_list for x in row))
        if sys.byteorder == "big":
            flat.byteswap()
        values, shape = flat.tobytes(), (len(rows_list), width)
    return _core.openai_vectors(values, shape[0], shape[1], max(0, int(prompt_tokens)))


class _EmbeddingEnds:
    def __init__(
        self, make: Callable[[EmbeddingRequest], Any], respond: Callable[[Any], bytes] | None
    ) -> None:
        self._make, self._respond = make, respond

    def task_from_request(self, request: Request) -> Any:
        asked = EmbeddingRequest(request)
        task = self._make(asked)
        task.openai_inputs = len(asked.inputs)
        return task

    def response_from_task(self, task: Any) -> bytes:
        if self._respond is not None:
            return self._respond(task)
        if task.embeddings is None:
            raise ValueError("the handler set no embeddings on the task")
        if len(task.embeddings) != task.openai_inputs:
            raise ValueError(f"{len(task.embeddings)} embeddings for {task.openai_inputs} inputs")
        return vectors_answer(task.embeddings, task.prompt_tokens)


class Embeddings:
    """``POST /v1/embeddings`` of an embedding flow, for ``routes=`` of
    ``aqueduct.http.serve``, ``Server`` or ``Service`` (with ``/v1/models``).

    ``model``: the name clients ask for. ``task_from_request``: an
    :class:`EmbeddingRequest` -> the task (default :class:`Embedding`).
    ``response_from_task``: the task -> :func:`vectors_answer`'s bytes
    (needed for a task that is not an Embedding). The front writes each
    vector as the request's ``encoding_format`` asks: a list of floats, or
    the base64 of its float32 bytes (what the official client asks for)."""

    def __init__(
        self,
        model: str,
        task_from_request: Callable[[EmbeddingRequest], Any] = Embedding,
        response_from_task: Callable[[Any], bytes] | None = None,
    ) -> None:
        if not isinstance(model, str) or not model or not model.isprintable():
            raise ValueError(f"model must be a printable name, got {model!r}")
        self.model = model
        self._ends = _EmbeddingEnds(task_from_request, response_from_task)

    def routes(self) -> dict[str, Route]:
        """Path -> Route: ``/v1/embeddings``."""
        ends = self._ends
        route = Route(
            ends.task_from_request,
            ends.response_from_task,
            protocol="openai.embeddings",
            model=self.model,
            summary=f"OpenAI-compatible embeddings of {self.model}",
        )
        return {EMBEDDINGS_PATH: route}
