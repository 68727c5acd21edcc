"""Web integrations, through the examples in examples/."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

WAIT = 20


def squares(n: int) -> int:
    return sum(i * i for i in range(n))


async def test_aiohttp_integrator_runs_the_flow_with_the_app(aiohttp_client):
    from aiohttp_app import prepare_app

    app = prepare_app()
    flow = app["flow"]
    assert not flow.is_running  # started with the application, not before
    client = await aiohttp_client(app)
    assert flow.is_running
    replies = await asyncio.wait_for(
        asyncio.gather(*(client.post("/sum", data=str(n).encode()) for n in range(30))), WAIT
    )
    assert [(await r.json())["result"] for r in replies] == [squares(n) for n in range(30)]
    metrics = await (await client.get("/metrics")).text()
    assert 'aqueduct_tasks_total{flow="flow",outcome="done"} 30.0' in metrics
    await client.close()
    assert not flow.is_running  # stopped on cleanup


async def test_aiohttp_maps_overload_to_503_and_timeouts_to_504(aiohttp_client):
    from aiohttp_app import prepare_app

    client = await aiohttp_client(prepare_app(queue_size=1))
    slow = str(3_000_000).encode()  # a few hundred ms of summing each
    replies = await asyncio.wait_for(
        asyncio.gather(*(client.post("/sum", data=slow) for _ in range(12))), WAIT
    )
    statuses = sorted(r.status for r in replies)
    assert 200 in statuses and 503 in statuses, statuses
    timed_out = await asyncio.wait_for(client.post("/sum?timeout=0.01", data=slow), WAIT)
    assert timed_out.status == 504
    await client.close()


def test_aiohttp_integrator_once_per_app():
    from aiohttp import web
    from aqueduct.integrations.aiohttp import AppIntegrator

    app = web.Application()
    AppIntegrator(app)
    with pytest.raises(RuntimeError):
        AppIntegrator(app)


def test_fastapi_integrator_with_dependency_and_lifespan():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from fastapi_app import create_app

    app = create_app()
    flow = app.state.flow
    with TestClient(app) as client:
        assert flow.is_running
        for n in (0, 10, 1000):
            response = client.post("/sum", json={"number": n})
            assert response.status_code == 200 and response.json() == {"result": squares(n)}
        slow = client.post("/sum", json={"number": 3_000_000, "timeout": 0.01})
        assert slow.status_code == 504
        assert "aqueduct_handle_seconds" in client.get("/metrics").text
    assert not flow.is_running


def test_fastapi_flow_lifespan_helper():
    pytest.importorskip("fastapi")
    from aqueduct import Flow, FlowStep
    from aqueduct.integrations.fastapi import flow_lifespan, get_flow
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient
    from support import Square, Task

    flow = Flow(FlowStep(Square()))
    app = FastAPI(lifespan=flow_lifespan({"squares": flow}))

    @app.get("/square/{n}")
    async def square(n: int, f: Flow = Depends(get_flow("squares"))) -> dict[str, int]:
        task = Task(n)
        await f.process(task)
        return {"result": task.result}

    with TestClient(app) as client:
        assert client.get("/square/12").json() == {"result": 144}
    assert not flow.is_running


def test_several_server_processes_share_one_flow(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    script = Path(__file__).resolve().parent.parent / "examples" / "prefork_server.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--servers", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("listening on"), line
        url = f"http://{line.split()[-1]}/sum"

        def post(n: int) -> dict:
            request = urllib.request.Request(url, data=str(n).encode(), method="POST")
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                return json.loads(response.read())

        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(post, range(300)))
        assert [r["result"] for r in replies] == [squares(n) for n in range(300)]
        servers = {r["server"] for r in replies}
        assert len(servers) >= 2, servers  # several processes, one flow
        assert proc.pid not in servers
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)


def test_segments_are_owner_only():
    import os
    import stat

    from aqueduct import _core

    queue = _core.Queue.create()
    mode = stat.S_IMODE(os.stat(f"/proc/self/fd/{queue.fd}").st_mode)
    assert mode == 0o600


def test_other_users_cannot_open_a_flow_s_shared_memory():
    import os
    import subprocess

    from aqueduct import _core

    if os.geteuid() != 0:
        pytest.skip("needs root to run a probe as another user")
    python = "/usr/bin/python3"  # one that user nobody may run
    if not os.access(python, os.X_OK):
        pytest.skip("no system python for the probe")
    queue = _core.Queue.create()
    path = f"/proc/{os.getpid()}/fd/{queue.fd}"
    probe = subprocess.run(
        [python, "-c", f"open({path!r}, 'rb')"],
        user=65534,  # nobody
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert probe.returncode != 0
    assert "PermissionError" in probe.stderr


async def test_the_observer_stops_the_server_when_a_flow_dies(monkeypatch):
    import signal

    from aqueduct import Flow, FlowStep
    from aqueduct.integrations import utils
    from support import Square

    flow = Flow(FlowStep(Square()))
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(utils.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    # a flow that is not running counts as dead
    await asyncio.wait_for(utils.observe_flows({"flow": flow}, check_interval=0.01), WAIT)
    assert killed == [(utils.os.getpid(), signal.SIGTERM)]
    assert utils.dead_flow({"flow": flow}) == "flow 'flow' is stopped"


def test_workers_die_with_the_master_even_when_servers_were_forked():
    """Forked server processes inherit the master's pipes; workers must not
    rely on them to learn that the master died."""
    import os
    import signal
    import subprocess

    from support import descendants_of, eventually, running

    script = Path(__file__).resolve().parent.parent / "examples" / "prefork_server.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--servers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith("listening on")  # type: ignore[union-attr]
        # two workers, two servers, ...
        family = eventually(lambda: len(found := descendants_of(proc.pid)) >= 4 and found)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT)
        eventually(
            lambda: not any(map(running, family)),
            within=5,
            what=lambda: f"left behind: {[pid for pid in family if running(pid)]}",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)


async def test_aiohttp_streams_a_tasks_parts_as_server_sent_events(aiohttp_client, tmp_path):
    from aiohttp import web
    from aqueduct import Flow, FlowStep
    from aqueduct.integrations.aiohttp import AppIntegrator, stream_response
    from generators import Counter, Prompt, noted
    from support import eventually_async

    log = str(tmp_path / "log")
    app = web.Application()
    AppIntegrator(app).add_flow(Flow(FlowStep(Counter(delay=0.005))))

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        task = Prompt(body["name"], body["length"], log)
        return await stream_response(request, request.app["flow"], task, timeout_sec=10)

    app.router.add_post("/generate", generate)
    client = await aiohttp_client(app)
    reply = await client.post("/generate", json={"name": "a", "length": 4})
    assert reply.headers["Content-Type"] == "text/event-stream"
    assert await asyncio.wait_for(reply.text(), WAIT) == "".join(
        f"data: a:{i}\n\n" for i in range(4)
    )
    broken = await client.post("/generate", json={"name": "e", "length": -1})
    text = await asyncio.wait_for(broken.text(), WAIT)
    assert text.startswith("data: e:0\n\ndata: e:1\n\nevent: error\ndata: {")
    assert "HandlerError" in text
    leaver = await client.post("/generate", json={"name": "leaver", "length": 100_000})
    await asyncio.wait_for(leaver.content.readuntil(b"\n\n"), WAIT)
    leaver.close()  # the connection goes: the task is cancelled
    await eventually_async(lambda: any(x.startswith("stopped leaver") for x in noted(log)))
    await client.close()
