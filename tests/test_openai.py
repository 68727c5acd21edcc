"""The OpenAI-compatible routes (aqueduct.openai), talked to by the official
``openai`` client (sync and async) and by raw HTTP where the wire itself is
checked. Real server, real sockets, bounded waits."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from support import WAIT, eventually
from test_http import service

SERVICE = Path(__file__).parent / "openai_service.py"
CHAT = [{"role": "user", "content": "hello world"}]


def client(port: int, **kwargs: object) -> openai.OpenAI:
    options = {"api_key": "unused", "timeout": WAIT, "max_retries": 0} | kwargs
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with service(SERVICE) as (port, _):
        yield port


def test_a_chat_completion_is_the_whole_object_with_its_finish_reason_and_usage(port):
    answer = client(port).chat.completions.create(model="parrot", messages=CHAT)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.model == "parrot" and answer.created > 0
    (choice,) = answer.choices
    assert (choice.message.role, choice.message.content) == ("assistant", "hello world " * 2)
    assert choice.finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 4)
    assert answer.usage.total_tokens == 6
    limited = client(port).chat.completions.create(model="parrot", messages=CHAT, max_tokens=3)
    assert limited.choices[0].message.content == "hello world hello "
    assert limited.choices[0].finish_reason == "length"


def test_a_chat_stream_is_role_then_contents_then_finish_then_usage(port):
    stream = client(port).chat.completions.create(
        model="parrot", messages=CHAT, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert {(c.id, c.created, c.model, c.object) for c in chunks} == {
        (chunks[0].id, chunks[0].created, "parrot", "chat.completion.chunk")
    }
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello world " * 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    plain = list(client(port).chat.completions.create(model="parrot", messages=CHAT, stream=True))
    assert all(c.usage is None for c in plain), "usage only when asked for"


def test_completions_stream_and_not(port):
    api = client(port)
    whole = api.completions.create(model="parrot", prompt="a b c", max_tokens=4)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == ("a b c a ", "length")
    parts = list(api.completions.create(model="parrot", prompt="a b", stream=True))
    assert "".join(p.choices[0].text for p in parts) == "a b a b "
    assert parts[-1].choices[0].finish_reason == "stop"


async def test_the_async_client_streams_and_awaits(port):
    api = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=WAIT, max_retries=0
    )
    async with api:
        stream = await api.chat.completions.create(model="parrot", messages=CHAT, stream=True)
        got = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(got) == "hello world " * 2
        answers = await asyncio.gather(
            *(
                api.chat.completions.create(
                    model="parrot", messages=[{"role": "user", "content": f"n{i}"}]
                )
                for i in range(8)
            )
        )
        assert [a.choices[0].message.content for a in answers] == [f"n{i} n{i} " for i in range(8)]


def test_the_wire_every_event_ends_with_a_blank_line_and_the_last_is_done(port):
    body = {"model": "parrot", "messages": CHAT, "stream": True}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    assert [json.loads(e[6:])["choices"][0]["delta"] for e in events[:2]] == [
        {"role": "assistant", "content": ""},
        {"content": "hello "},
    ]


def test_models_are_listed_and_an_unknown_one_is_a_404(port):
    api = client(port)
    assert [m.id for m in api.models.list()] == ["parrot"]
    assert api.models.retrieve("parrot").owned_by == "aqueduct"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("gpt-4")
    with pytest.raises(openai.NotFoundError) as unknown:
        api.chat.completions.create(model="gpt-4", messages=CHAT)
    assert unknown.value.code == "model_not_found"


def test_bad_requests_are_api_errors_naming_their_param(port):
    api = client(port)
    with pytest.raises(openai.BadRequestError) as many:
        api.chat.completions.create(model="parrot", messages=CHAT, n=2)
    assert many.value.param == "n"
    with pytest.raises(openai.BadRequestError) as empty:
        api.chat.completions.create(model="parrot", messages=[])
    assert empty.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as hot:
        api.chat.completions.create(model="parrot", messages=CHAT, temperature=9)
    assert hot.value.param == "temperature"
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    for sent in (b"not json", b"[]", b'{"model": "parrot", "messages": "hi"}'):
        response = httpx.post(url, content=sent, timeout=WAIT)
        assert response.status_code == 400, sent
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], sent
    unknown = {"model": "parrot", "messages": CHAT, "frequency_penalty": 0.5, "whatever": {}}
    assert httpx.post(url, json=unknown, timeout=WAIT).status_code == 200


def test_a_handler_error_is_a_500_before_the_first_chunk_and_an_error_event_after(port):
    api = client(port)
    boom = [{"role": "user", "content": "boom"}]
    with pytest.raises(openai.InternalServerError) as before:
        api.chat.completions.create(model="parrot", messages=boom)
    assert before.value.code == "ValueError"
    late = [{"role": "user", "content": "late boom"}]
    stream = api.chat.completions.create(model="parrot", messages=late, stream=True)
    with pytest.raises(openai.APIError, match="boom after a token"):
        for _chunk in stream:
            pass


def test_leaving_a_stream_cancels_the_task_in_the_worker(tmp_path):
    notes = tmp_path / "notes"
    with service(SERVICE, TOKEN_DELAY="0.02", NOTES=str(notes)) as (port, _):
        api = client(port)
        stream = api.chat.completions.create(
            model="parrot",
            messages=[{"role": "user", "content": "leaving"}],
            stream=True,
            max_tokens=2000,
            extra_body={"endless": True},
        )
        for n, _chunk in enumerate(stream):
            if n == 3:
                break
        stream.close()
        eventually(lambda: notes.exists() and "cancelled leaving" in notes.read_text())


def hold(port: int, body: dict[str, object]) -> socket.socket:
    """A connection that sent a request and reads nothing of its answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    data = json.dumps(body).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
    sock.sendall(head.encode() + data)
    return sock


def test_a_full_queue_is_a_429_with_retry_after_that_the_client_retries():
    with service(SERVICE, TOKEN_DELAY="0.05", QUEUE_SIZE="1") as (port, _):
        endless = {"model": "parrot", "messages": CHAT, "max_tokens": 100, "endless": True}
        holding = [hold(port, endless)]  # handled
        time.sleep(0.2)
        holding.append(hold(port, endless))  # queued: the queue is full
        time.sleep(0.2)
        with pytest.raises(openai.RateLimitError) as full:
            client(port).chat.completions.create(model="parrot", messages=CHAT)
        assert full.value.response.headers["retry-after"] == "1"
        assert full.value.type == "rate_limit_error"
        # the client waits Retry-After before it retries: the queue frees meanwhile
        threading.Timer(0.3, lambda: [s.close() for s in holding]).start()
        started = time.monotonic()
        answer = client(port, max_retries=2).chat.completions.create(model="parrot", messages=CHAT)
        assert answer.choices[0].message.content == "hello world " * 2
        assert time.monotonic() - started >= 0.9, "it retried after Retry-After"


def test_an_idle_stream_is_pinged_and_api_keys_are_asked_in_the_apis_shape():
    with service(SERVICE, TOKEN_DELAY="0.5", PING="0.1", API_KEY="k1") as (port, _):
        with pytest.raises(openai.AuthenticationError):
            client(port, api_key="wrong").models.list()
        body = {"model": "parrot", "messages": CHAT, "stream": True, "max_tokens": 2}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": "Bearer k1"}
        with httpx.stream("POST", url, json=body, headers=headers, timeout=WAIT) as r:
            raw = r.read().decode()
        assert ": ping\n\n" in raw
        assert raw.endswith("data: [DONE]\n\n")
        assert (
            client(port, api_key="k1")
            .chat.completions.create(model="parrot", messages=CHAT, max_tokens=1)
            .choices[0]
            .message.content
            == "hello "
        )


EMBEDDER = Path(__file__).parent / "embedding_service.py"


def test_embeddings_in_the_clients_default_base64_and_as_floats_batched_through_the_step():
    with service(EMBEDDER, DIMENSIONS="1536") as (port, _):
        api = client(port)
        assert [m.id for m in api.models.list()] == ["embedder"]
        # the official client asks for base64 and decodes it itself
        got = api.embeddings.create(model="embedder", input=["hello", "big world"])
        assert [d.index for d in got.data] == [0, 1]
        assert [d.embedding[:3] for d in got.data] == [[5, 1, 0], [9, 1, 1]]
        assert len(got.data[0].embedding) == 1536 and got.data[0].embedding[3] == 0.5
        assert got.usage.prompt_tokens == 3 and got.model == "embedder"
        floats = api.embeddings.create(model="embedder", input="abc", encoding_format="float")
        assert floats.data[0].embedding[:4] == [3, 1, 0, 0.5]
        raw = httpx.post(
            f"http://127.0.0.1:{port}/v1/embeddings",
            json={"model": "embedder", "input": [[1, 2, 3]], "encoding_format": "float"},
            timeout=WAIT,
        ).json()
        assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding"
        assert raw["data"][0]["embedding"][:3] == [3.0, 1.0, 0.0]
        assert raw["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

        # concurrent requests share the step's batches
        def one(n: int) -> float:
            return api.embeddings.create(model="embedder", input=f"n{n}").data[0].embedding[1]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            batched = list(pool.map(one, range(16), timeout=WAIT))
        assert max(batched) > 1, batched


def test_embedding_errors_are_api_errors():
    with service(EMBEDDER) as (port, _):
        api = client(port)
        with pytest.raises(openai.NotFoundError):
            api.embeddings.create(model="other", input="x")
        with pytest.raises(openai.BadRequestError) as bad:
            api.embeddings.create(model="embedder", input=[])
        assert bad.value.body["param"] == "input"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad:
            api.embeddings.create(model="embedder", input="x", encoding_format="hex")  # type: ignore[arg-type]
        assert bad.value.body["param"] == "encoding_format"  # type: ignore[index]
        for failing in ("boom", "wrong"):
            with pytest.raises(openai.InternalServerError) as failed:
                api.embeddings.create(model="embedder", input=[failing, "x"])
            assert failed.value.body["type"] == "server_error", failed.value.body  # type: ignore[index]
        assert api.embeddings.create(model="embedder", input="still").data[0].embedding[0] == 5
