"""Type stubs for the native module ``aqueduct._core`` (crates/aqueduct-py),
checked against it by ``make lint`` (mypy's stubtest)."""

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, final

__all__ = [
    "BOOKKEEPING_FIELDS",
    "BUFFER_THRESHOLD",
    "CARRIED",
    "CLASS_NAMED",
    "CLASS_PLAIN",
    "CLASS_STATE",
    "CLASS_TIMEOUT",
    "CLIENT_SHIFT",
    "DEFAULT_RING_SLOTS",
    "DEFAULT_SLOT_BYTES",
    "DEFAULT_SPIN_US",
    "FLAGS",
    "FLAG_BODY",
    "FLAG_HTTP",
    "FLAG_REFS",
    "FLAG_STREAM",
    "HTTP_ROUTE_MASK",
    "HTTP_ROUTE_SHIFT",
    "INLINE_LIMIT",
    "KIND_DROPPED",
    "KIND_ERROR",
    "KIND_HTTP_PART",
    "KIND_HTTP_REQUEST",
    "KIND_HTTP_RESPONSE",
    "KIND_PART",
    "KIND_STATE",
    "KIND_TASK",
    "KIND_TASK_BY_VALUE",
    "MAX_CLIENTS",
    "MAX_PRIORITIES",
    "MAX_REQUEST_ID",
    "MAX_STEPS",
    "MAX_STEP_TIMES",
    "PICKLE_PROTOCOL",
    "REQUEST_ID_HEADER",
    "RESERVED_PATHS",
    "STEP_COUNTERS",
    "STEP_GAUGES",
    "STEP_HISTOGRAMS",
    "STEP_TIMES_HEADER",
    "TENSOR_DATATYPES",
    "Client",
    "Control",
    "Doorbell",
    "HttpServer",
    "Message",
    "Queue",
    "SharedArena",
    "ShmView",
    "StepWorker",
    "encode_refs",
    "error_event",
    "error_prefix",
    "error_rest",
    "openai_summary",
    "openai_vectors",
    "part_chunk",
    "read_tensor_table",
    "split_refs",
    "split_state",
    "state_fields",
    "step_times",
    "uuid4",
    "write_tensor_table",
]

# The wire constants, limits and defaults, each defined once in the core
# (aqueduct-core's wire.rs, queue.rs, spin.rs, metrics.rs).
KIND_TASK: int
KIND_ERROR: int
KIND_TASK_BY_VALUE: int
KIND_DROPPED: int
KIND_STATE: int
KIND_HTTP_REQUEST: int
KIND_HTTP_RESPONSE: int
KIND_PART: int
KIND_HTTP_PART: int
FLAG_HTTP: int
FLAG_STREAM: int
CARRIED: int
HTTP_ROUTE_SHIFT: int
HTTP_ROUTE_MASK: int
FLAG_REFS: int
FLAG_BODY: int
FLAGS: int
CLIENT_SHIFT: int
MAX_CLIENTS: int
MAX_PRIORITIES: int
MAX_STEPS: int
PICKLE_PROTOCOL: int
BUFFER_THRESHOLD: int
INLINE_LIMIT: int
DEFAULT_SPIN_US: int
BOOKKEEPING_FIELDS: list[str]
DEFAULT_RING_SLOTS: int
DEFAULT_SLOT_BYTES: int
CLASS_PLAIN: int
CLASS_NAMED: int
CLASS_STATE: int
CLASS_TIMEOUT: int
#: The names of a step's histograms and counters in ``Control.metrics``.
STEP_HISTOGRAMS: list[str]
STEP_COUNTERS: list[str]
STEP_GAUGES: list[str]
RESERVED_PATHS: list[str]
#: The Open Inference Protocol's datatypes, in code order.
TENSOR_DATATYPES: list[str]
MAX_REQUEST_ID: int
MAX_STEP_TIMES: int
#: ``x-request-id``: a request's id, taken or made by the HTTP front.
REQUEST_ID_HEADER: str
#: The header a traced answer carries the step times in (``step_times``).
STEP_TIMES_HEADER: str

_Ref = tuple[int, int, int, int]
"""``(arena, block, offset, length)`` of a buffer in shared memory."""

@final
class Doorbell:
    """An eventfd the parent's event loop watches for results."""

    def __new__(cls) -> Doorbell: ...
    @staticmethod
    def open(fd: int) -> Doorbell: ...
    @property
    def fd(self) -> int: ...
    def signal(self) -> None: ...
    def drain(self) -> int: ...

@final
class Message:
    """A queue message, however it crosses the binding."""

    def __new__(
        cls, key: int, kind: int, payload: bytes, priority: int = 0, deadline_ns: int = 0
    ) -> Message: ...
    @property
    def key(self) -> int: ...
    @property
    def kind(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def deadline_ns(self) -> int: ...
    @property
    def payload(self) -> bytes: ...

@final
class Queue:
    """A step's input queue (a ring per priority) in a sealed memfd segment."""

    @staticmethod
    def create(
        priorities: int = 1,
        capacity: int = ...,  # DEFAULT_RING_SLOTS
        slot_bytes: int = ...,  # DEFAULT_SLOT_BYTES
        max_messages: int = 0,
        spin_us: int = ...,
    ) -> Queue: ...
    @staticmethod
    def open(fd: int, spin_us: int = ...) -> Queue: ...
    @property
    def fd(self) -> int: ...
    def __len__(self) -> int: ...
    def try_push(self, message: Message) -> bool: ...
    def push_waiting(self, message: Message, timeout: float = ...) -> bool: ...
    def notify(self, doorbell: Doorbell | None = None) -> None: ...
    def unpublished_heads(self) -> list[tuple[int, int]]: ...
    # test hooks: in builds with the fault-injection feature only
    def drain(self, limit: int) -> list[Message]: ...
    def abandon_push(self, payload_len: int) -> None: ...
    def sleepers(self) -> tuple[int, int]: ...
    def skip_abandoned(self, ring: int, head: int) -> bool: ...
    def close(self) -> None: ...

_HttpRoute = tuple[Callable[[Any], Any], Callable[[Any], Any], Callable[[Any], Any] | None]
_HttpEnds = tuple[list[_HttpRoute], type, type, list[SharedArena], int]
"""``(routes, Request, Response, arenas, own arena)``: what a worker of a flow
served over HTTP makes tasks and responses with (a big answer goes in its
own arena)."""

@final
class StepWorker:
    """A worker's per-task path: batches in, handled tasks routed and pushed on.

    ``slow`` is the worker's Python half: ``load(message)``, ``encode(task,
    key, by_value)``, ``encode_part(part, key)``, ``discard(refs)``,
    ``retire(refs, kept)``, ``report(exc, status)``, ``drop(messages)``,
    ``resolve(name)``.
    """

    def __new__(
        cls,
        step: int,
        slot: int,
        queues: Sequence[Queue],
        doorbells: Sequence[Doorbell],
        control: Control,
        conditions: Sequence[Callable[[Any], object]],
        slow: object,
        batch_size: int = 1,
        batch_timeout: float = 0.0,
        burst: int = 1,
        http: _HttpEnds | None = None,
        continuous: bool = False,
        objective: float | None = None,
    ) -> StepWorker: ...
    def next(self, idle_timeout: float | None) -> bool | None: ...
    def batch(self) -> list[Any]: ...
    def active(self, idle_timeout: float | None) -> list[Any] | None: ...
    def forward(self, took_ns: int = 0) -> None: ...
    def fail(self, payload: bytes) -> None: ...
    def emit(self, task: Any, part: Any) -> bool: ...
    def finish(self, task: Any) -> None: ...
    def is_cancelled(self, task: Any) -> bool: ...
    def flush(self) -> None: ...
    @property
    def input(self) -> Queue: ...

@final
class Client:
    """One process's per-task path: submitting, settling results, timeouts.

    ``slow`` is the client's Python half: ``encode(task, key, by_value)``,
    ``discard(refs)``, ``result(kind, payload)``, ``error(payload)``,
    ``unwanted(payload)``, ``corrupt(reason)``.
    """

    def __new__(
        cls,
        slot: int,
        steps: Sequence[Queue],
        results: Queue,
        doorbell: Doorbell,
        control: Control,
        arena: SharedArena,
        conditions: Sequence[Callable[[Any], object]],
        classify: Callable[[type], int],
        slow: object,
        *,
        priorities: int = 1,
        reject_when_full: bool = False,
        step_names: Sequence[str] = ...,
        queue_size: int | None = None,
        metrics_step: int | None = None,
        spin_us: int = 0,
        first_batch_size: int = 1,
    ) -> Client: ...
    def attach(self, event_loop: asyncio.AbstractEventLoop) -> None: ...
    def submit(
        self, task: Any, timeout_sec: float, sink: Callable[[], Any] | None = None
    ) -> asyncio.Future[Any] | None: ...
    def resolve(self) -> None: ...
    def expire(self) -> None: ...
    def flush(self) -> None: ...
    def cancel(self, future: asyncio.Future[Any]) -> None: ...
    def fail_all(self, exc: BaseException) -> None: ...
    def futures(self) -> list[asyncio.Future[Any]]: ...
    def __len__(self) -> int: ...
    def counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...

_Histogram = tuple[int, int, list[int]]
"""``(count, sum, buckets)``; bucket ``i`` counts values below ``2**i``."""

@final
class Control:
    """A flow's control block: workers' claims, the cancel set, metrics."""

    @staticmethod
    def create(slots: int, steps: int = 1, metered: bool = True) -> Control: ...
    @staticmethod
    def open(fd: int) -> Control: ...
    @property
    def fd(self) -> int: ...
    def cancel(self, key: int) -> None: ...
    def claim_client(self) -> int: ...
    def clients_claimed(self) -> int: ...
    def reserve_clients(self, count: int) -> None: ...
    def claims(self, slot: int) -> list[int]: ...
    def clear_claims(self, slot: int) -> None: ...
    def busy(self, slot: int) -> bool: ...
    def hold(self, slot: int) -> None: ...
    def release(self, slot: int) -> None: ...
    def retire(self, slot: int) -> None: ...
    def retired(self, slot: int) -> bool: ...
    def set_workers(self, step: int, running: int, starting: int, retiring: int) -> None: ...
    def metrics(self, step: int) -> dict[str, Any] | None:
        """``STEP_HISTOGRAMS`` as ``_Histogram``s, ``STEP_COUNTERS`` as ints."""

def uuid4() -> str | None: ...
def state_fields(body: bytes) -> dict[str, Any]: ...
def encode_refs(refs: list[_Ref]) -> bytes: ...
def split_refs(payload: bytes) -> tuple[list[_Ref], int]: ...
def split_state(payload: bytes) -> tuple[bytes, int]: ...
def error_prefix(status: int, message: str, kind: str, detail: str | None = None) -> bytes: ...
def part_chunk(part: Any) -> bytes: ...
def error_event(message: str, kind: str) -> bytes: ...
def error_rest(payload: bytes) -> bytes: ...
def step_times(times: list[tuple[int, int, int]]) -> str: ...
def openai_summary(
    text: str | None, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> bytes: ...
def openai_vectors(values: bytes, rows: int, dimensions: int, prompt_tokens: int) -> bytes: ...
def read_tensor_table(
    table: Any,
) -> tuple[bytes, list[tuple[str, str, list[int], int, int]]]: ...
def write_tensor_table(meta: bytes, tensors: list[tuple[str, str, list[int], Any]]) -> bytes: ...

@final
class HttpServer:
    """The Rust HTTP front of a flow (see ``aqueduct.http``)."""

    def __new__(
        cls,
        *,
        host: str,
        port: int,
        paths: list[str],
        steps: list[Queue],
        results: Queue,
        control: Control,
        arena: SharedArena,
        arenas: list[SharedArena],
        client: int,
        timeout: float,
        body_limit: int,
        threads: int,
        streams: list[str | None] = ...,
        header_timeout: float = 10.0,
        max_connections: int = 10000,
        body_timeout: float = 30.0,
        idle_timeout: float = 30.0,
        write_timeout: float = 30.0,
        access_log: str | None = None,
        api_keys: list[str] = ...,
        open_metrics: bool = False,
        openapi: bytes | None = None,
        reuse_port: bool = False,
        trace: bool = False,
        protocols: list[str] = ...,
        model: str | None = None,
        ping: float = 15.0,
        kserve: bytes | None = None,
    ) -> HttpServer: ...
    @property
    def port(self) -> int: ...
    @property
    def phase(self) -> str: ...
    @property
    def connections(self) -> int: ...
    def set_failure(self, reason: str | None) -> None: ...
    def set_unready(self, reasons: list[str | None]) -> None: ...
    def drain(self) -> None: ...
    def close(self) -> None: ...
    def retarget(
        self,
        steps: list[Queue],
        results: Queue,
        control: Control,
        arena: SharedArena,
        arenas: list[SharedArena],
        client: int,
    ) -> None: ...
    def set_names(self, flow: str, steps: list[str], processes: list[tuple[str, int]]) -> None: ...
    def corruption(self) -> str | None: ...
    def stop(self, grace: float) -> None: ...
    def take_traces(
        self, timeout: float
    ) -> tuple[
        list[
            tuple[str, str | None, str | None, str, str, int, int, int, list[tuple[int, int, int]]]
        ],
        int,
    ]: ...

@final
class ShmView:
    """A writable buffer-protocol view of part of an arena block."""

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...

@final
class SharedArena:
    """A memfd arena for large buffers; the owning process allocates."""

    @staticmethod
    def create(capacity: int, track: bool = True) -> SharedArena: ...
    @staticmethod
    def open(fd: int, own: bool = False, track: bool = False) -> SharedArena: ...
    @property
    def fd(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def used(self) -> int: ...
    def place(self, buffer: object, key: int) -> int: ...
    def locate(self, buffer: object) -> tuple[int, int] | None: ...
    def alloc(self, len: int, key: int) -> tuple[int, ShmView]: ...
    def view(self, block: int, offset: int, len: int) -> ShmView: ...
    def free(self, block: int) -> bool: ...
    def free_keys(self, keys: list[int]) -> int: ...
