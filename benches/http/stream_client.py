"""Load for the streaming benchmark: ``connections`` keep-alive clients, each
sending one request after the other and reading its Server-Sent Events as
they come (a raw HTTP/1.1 client on asyncio, the same for every server).
Reports tokens/s, time to first token (p50, p99) and errors."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable

MAX_TOKENS = 128


def plain_body(length: int) -> bytes:
    """The plain route's request: ``{"length": L}``."""
    return json.dumps({"length": length}).encode()


def plain_token(event: bytes) -> bool:
    """Every event of the plain route is a token."""
    return event.startswith(b"data:")


def chat_body(length: int) -> bytes:
    """An OpenAI chat completion streaming ``length`` tokens."""
    messages = [{"role": "user", "content": "go"}]
    fields = {"model": "emulator", "messages": messages, "max_tokens": length, "stream": True}
    return json.dumps(fields).encode()


def chat_token(event: bytes) -> bool:
    """A chat chunk with text (not the role's, the finish's or [DONE])."""
    return b'"content":"' in event.replace(b'": "', b'":"') and b'"content":""' not in event


async def _one_stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    path: str,
    length: int,
    make_body: Callable[[int], bytes] = plain_body,
    is_token: Callable[[bytes], bool] = plain_token,
) -> tuple[float, int]:
    body = make_body(length)
    started = time.perf_counter()
    writer.write(
        b"POST %s HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    first = 0.0
    events = 0
    pending = b""
    while True:  # chunked: size line, data, CRLF; a 0 size ends it
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            break
        pending += data[:-2]
        while b"\n\n" in pending:
            event, pending = pending.split(b"\n\n", 1)
            if event.startswith(b"event: error") or event.startswith(b'data: {"error"'):
                raise RuntimeError(event.decode())
            if is_token(event):
                if events == 0:
                    first = time.perf_counter() - started
                events += 1
    return first, events


async def load(
    port: int,
    path: str,
    connections: int,
    seconds: float,
    make_body: Callable[[int], bytes] = plain_body,
    is_token: Callable[[bytes], bool] = plain_token,
) -> dict[str, float]:
    deadline = time.perf_counter() + seconds
    firsts: list[float] = []
    tokens = 0
    errors = 0

    async def client(seed: int) -> None:
        nonlocal tokens, errors
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                length = rng.randint(1, MAX_TOKENS)
                try:
                    first, events = await _one_stream(
                        reader, writer, path, length, make_body, is_token
                    )
                except (RuntimeError, asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                tokens += events
                firsts.append(first)
                if events < length:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(connections)))
    wall = time.perf_counter() - started
    firsts.sort()
    return {
        "tokens_per_s": tokens / wall,
        "streams": float(len(firsts)),
        "ttft_p50_ms": statistics.median(firsts) * 1e3 if firsts else float("nan"),
        "ttft_p99_ms": firsts[int(len(firsts) * 0.99)] * 1e3 if firsts else float("nan"),
        "errors": float(errors),
        "tokens": float(tokens),
    }
