"""Ray Serve integration, on a real two-node Ray cluster started on this
machine (ray.cluster_utils.Cluster). Skipped only where ray is not installed."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pickle
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from aqueduct import Flow, FlowStep  # noqa: E402
from aqueduct.exceptions import (  # noqa: E402
    FlowError,
    HandlerError,
    QueueFullError,
    TaskSerializationError,
    TaskTimeoutError,
)
from aqueduct.integrations.ray import FlowHandle, flow_deployment  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from support import (  # noqa: E402
    DiesOnStart,
    Gate,
    Mortal,
    Raises,
    Recorder,
    Task,
    children_of,
    eventually_async,
    running,
)

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

#: bound on every wait in this module (deploys take a few seconds)
WAIT = 60
CPUS_PER_NODE = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """A head node and a second node, each with two logical CPUs, and Serve
    with its HTTP proxy on the head only."""
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": CPUS_PER_NODE, "include_dashboard": False},
    )
    nodes.add_node(num_cpus=CPUS_PER_NODE)
    nodes.wait_for_nodes()
    path = os.pathsep.join([str(HERE), str(EXAMPLES)])
    ray.init(address=nodes.address, runtime_env={"env_vars": {"PYTHONPATH": path}})
    port = _free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        yield {"url": f"http://127.0.0.1:{port}", "nodes": nodes}
    finally:
        serve.shutdown()
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture
def deploy(cluster) -> Iterator[Any]:
    """serve.run with a unique app name; deletes the apps afterwards."""
    names: list[str] = []

    def run(deployment: Any, route_prefix: str | None = None) -> Any:
        name = f"app{len(names)}_{os.getpid()}_{time.monotonic_ns()}"
        names.append(name)
        return serve.run(deployment.bind(), name=name, route_prefix=route_prefix)

    yield run
    for name in names:
        serve.delete(name)


def build_square_sum() -> Flow:
    from ray_app import build_flow

    return build_flow()


def build_recorder(batch_size: int = 8) -> Flow:
    return Flow(FlowStep(Recorder("a"), batch_size=batch_size, batch_timeout=0.05))


def build_raises() -> Flow:
    return Flow(Raises())


def build_mortal(starts_file: str) -> Flow:
    return Flow(FlowStep(Mortal(starts_file)))


async def _info(handle: Any) -> dict[str, Any]:
    return await asyncio.wait_for(handle.info.remote(), WAIT)


async def _replica_infos(handle: Any, want: int) -> dict[int, dict[str, Any]]:
    """The info of ``want`` distinct replicas (asks until it has seen them)."""
    seen: dict[int, dict[str, Any]] = {}

    async def all_seen() -> bool:
        infos = await asyncio.gather(*(_info(handle) for _ in range(8)))
        seen.update((i["pid"], i) for i in infos)
        return len(seen) >= want

    await eventually_async(all_seen, every=0, what=lambda: f"saw only {len(seen)} replicas")
    return seen


def _post(url: str, body: Any, timeout: float = WAIT) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- FlowHandle against a replica in this process (no cluster) -----------------------


class DirectHandle:
    """Stands in for a DeploymentHandle: copies the tasks as Ray would
    (pickle), runs ``process_batch`` of ``replica`` here, records each
    request's size and how many were out at once."""

    def __init__(self, replica: Any = None, answer: Any = None) -> None:
        self.replica = replica
        self.answer = answer  # an exception to fail requests with, or "never"
        self.requests: list[int] = []
        self.out = self.most_out = 0
        self.cancelled = 0
        self.process_batch = self

    def remote(self, tasks: list[Any], timeouts: list[float]) -> asyncio.Future[Any]:
        self.requests.append(len(tasks))
        return asyncio.ensure_future(self._request(pickle.loads(pickle.dumps(tasks)), timeouts))

    async def _request(self, tasks: list[Any], timeouts: list[float]) -> Any:
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        try:
            await asyncio.sleep(0.01)  # the way there
            if self.answer == "never":
                await asyncio.sleep(3600)
            if isinstance(self.answer, BaseException):
                raise self.answer
            return pickle.loads(pickle.dumps(await self.replica.process_batch(tasks, timeouts)))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.out -= 1


@pytest.fixture
async def replica() -> Any:
    from aqueduct.integrations.ray import FlowReplica

    replica = FlowReplica(build_raises_batched, start_timeout=WAIT)
    yield replica
    stop = replica.__del__()
    assert stop is not None  # the flow was running: __del__ hands back its stop
    await asyncio.wait_for(stop, WAIT)
    assert replica.__del__() is None and not replica.flow.is_running


def build_raises_batched() -> Flow:
    return Flow(FlowStep(Raises(), batch_size=1))


async def test_flow_handle_sends_concurrent_tasks_together(replica):
    direct = DirectHandle(replica)
    flow = FlowHandle(direct, max_in_flight=4, split_at=8)
    tasks = [Task(value=10 + i) for i in range(64)]
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
    assert [t.result for t in tasks] == [10 + i for i in range(64)]
    assert sum(direct.requests) == 64
    assert direct.most_out <= 4 and len(direct.requests) <= 8  # 64 tasks, >= 8 a request
    lone = Task(value=7)
    direct.requests.clear()
    assert await asyncio.wait_for(flow.process(lone), WAIT) and lone.result == 7
    assert direct.requests == [1]  # sent at once, alone


async def test_flow_handle_fails_only_the_task_that_failed(replica):
    flow = FlowHandle(DirectHandle(replica))
    tasks = [Task(value=v) for v in (5, 3, 6)]  # 3: the handler raises
    results = await asyncio.wait_for(
        asyncio.gather(*(flow.process(t) for t in tasks), return_exceptions=True), WAIT
    )
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], HandlerError)
    assert (tasks[0].result, tasks[1].result, tasks[2].result) == (5, None, 6)


async def test_flow_handle_turns_ray_failures_into_flow_errors():
    from ray.exceptions import RayError

    for answer, expected in ((RayError("replica died"), FlowError), (OSError("?"), FlowError)):
        flow = FlowHandle(DirectHandle(answer=answer))
        results = await asyncio.wait_for(
            asyncio.gather(*(flow.process(Task()) for _ in range(5)), return_exceptions=True),
            WAIT,
        )
        assert all(type(r) is expected for r in results), results
    silent = DirectHandle(answer="never")
    flow = FlowHandle(silent, wait_margin=0.2)
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        await asyncio.wait_for(flow.process(Task(), timeout_sec=0.1), WAIT)
    assert time.monotonic() - started < 5
    # the request was given up, not left behind
    await eventually_async(lambda: silent.cancelled == 1, within=5)


async def test_check_health_fails_once_the_flow_cannot_serve():
    from aqueduct.integrations.ray import FlowReplica

    replica = FlowReplica(build_raises_batched, start_timeout=WAIT)
    replica.check_health()  # running: healthy
    await asyncio.wait_for(replica.__del__(), WAIT)
    with pytest.raises(FlowError, match="stopped"):
        replica.check_health()


def _request(body: bytes) -> Any:
    from starlette.requests import Request

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)


async def test_http_answers_500_for_what_the_conversions_get_wrong():
    from aqueduct.integrations.ray import FlowReplica

    async def not_a_task(request: Any) -> Any:
        """An empty body makes no task: a dict comes back instead."""
        if await request.body() == b"{}":
            return {"value": 1}
        return await _task_from_json(request)

    def unserializable(task: Task) -> Any:
        return {"lock": threading.Lock()}

    replica = FlowReplica(
        build_raises_batched,
        task_from_request=not_a_task,
        response_from_task=unserializable,
        start_timeout=WAIT,
    )
    try:
        reply = await asyncio.wait_for(replica(_request(b"{}")), WAIT)
        assert reply.status_code == 500 and b"not a BaseTask" in reply.body
        assert json.loads(reply.body)["type"] == "TypeError"
        reply = await asyncio.wait_for(replica(_request(b'{"value": 5}')), WAIT)
        assert reply.status_code == 500 and b"response_from_task" in reply.body
        assert json.loads(reply.body)["type"] == "TypeError"
        reply = await asyncio.wait_for(replica(_request(b'{"value": 3}')), WAIT)
        assert reply.status_code == 500 and b"HandlerError" in reply.body  # Raises raised
    finally:
        await asyncio.wait_for(replica.__del__(), WAIT)


# -- handles ---------------------------------------------------------------------


async def test_a_handle_sets_the_handlers_fields_on_the_callers_task(deploy):
    from ray_app import SumTask

    flow = FlowHandle(deploy(flow_deployment(build_square_sum, name="sum")))
    tasks = [SumTask(n) for n in range(50)]
    done = await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
    assert done == [True] * 50
    assert [t.sum for t in tasks] == [sum(i * i for i in range(n)) for n in range(50)]


async def test_batching_happens_inside_the_replica_flow(deploy):
    flow = FlowHandle(deploy(flow_deployment(build_recorder, name="batches")))
    tasks = [Task(value=i) for i in range(64)]
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
    assert all(t.trail == ["a"] for t in tasks)
    assert max(t.batch_size or 0 for t in tasks) > 1  # callers' tasks shared batches


async def test_a_handle_raises_the_flows_own_exceptions(deploy):
    flow = FlowHandle(deploy(flow_deployment(build_raises, name="raises")))
    with pytest.raises(HandlerError) as caught:
        await asyncio.wait_for(flow.process(Task(value=3)), WAIT)
    assert caught.value.exc_type.endswith("UnprintableError")
    slow = FlowHandle(deploy(flow_deployment(build_recorder, name="slow")))
    with pytest.raises(TaskTimeoutError):
        await asyncio.wait_for(slow.process(Task(value=1, sleep=2), timeout_sec=0.2), WAIT)
    ok = Task(value=5)  # the replicas still serve
    assert await asyncio.wait_for(flow.process(ok), WAIT) and ok.result == 5


async def test_a_task_ray_cannot_pickle_fails_alone(deploy):
    flow = FlowHandle(deploy(flow_deployment(build_recorder, name="pickles")))
    bad = Task(value=1)
    bad.lock = threading.Lock()  # type: ignore[attr-defined]
    tasks = [Task(value=i) for i in range(5)] + [bad]
    results = await asyncio.wait_for(
        asyncio.gather(*(flow.process(t) for t in tasks), return_exceptions=True), WAIT
    )
    assert results[:5] == [True] * 5 and all(t.trail == ["a"] for t in tasks[:5])
    assert isinstance(results[5], TaskSerializationError), results[5]


async def test_ray_serve_back_pressure_is_a_full_queue(deploy):
    flow = FlowHandle(
        deploy(
            flow_deployment(
                build_recorder, name="pressed", max_ongoing_requests=1, max_queued_requests=1
            )
        ),
        split_at=1,  # a request per task, so Ray's queue overflows
    )
    tasks = [flow.process(Task(value=i, sleep=0.3)) for i in range(6)]
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)
    assert any(r is True for r in results)
    assert any(isinstance(r, QueueFullError) for r in results), results


# -- HTTP ingress ----------------------------------------------------------------


async def test_http_ingress_answers_json_and_maps_errors(cluster, deploy):
    from ray_app import deployment

    deploy(deployment, route_prefix="/sum")
    url = cluster["url"] + "/sum"
    status, body = await asyncio.to_thread(_post, url, {"number": 10})
    assert (status, body) == (200, {"sum": 285})
    status, body = await asyncio.to_thread(_post, url, b"not json")
    assert status == 400 and body["error"].startswith("cannot make a task of this request")
    assert body["type"] == "JSONDecodeError"

    slow = flow_deployment(
        build_recorder,
        name="slow_http",
        timeout_sec=0.2,
        task_from_request=_task_from_json,
    )
    deploy(slow, route_prefix="/slow")
    status, body = await asyncio.to_thread(_post, cluster["url"] + "/slow", {"value": 4})
    assert status == 200  # default answer: the task's fields
    assert body["value"] == 4 and body["trail"] == ["a"] and "task_id" in body
    status, body = await asyncio.to_thread(_post, cluster["url"] + "/slow", {"sleep": 2})
    assert status == 504 and body["type"] == "TaskTimeoutError"

    deploy(flow_deployment(build_recorder, name="no_http"), route_prefix="/none")
    status, body = await asyncio.to_thread(_post, cluster["url"] + "/none", {})
    assert status == 404 and "task_from_request" in body["error"]
    assert body["type"] == "NotFound"


async def _task_from_json(request: Any) -> Task:
    return Task(**await request.json())


# -- replicas, nodes, health, shutdown ---------------------------------------------


async def test_replicas_on_both_nodes_each_own_a_flow(cluster, deploy):
    from ray_app import SumTask

    # a replica takes all CPUs of a node: one replica per node
    deployment = flow_deployment(
        build_square_sum,
        name="spread",
        num_replicas=2,
        ray_actor_options={"num_cpus": CPUS_PER_NODE},
    )
    handle = deploy(deployment)
    replicas = await _replica_infos(handle, 2)
    assert len({i["node_id"] for i in replicas.values()}) == 2
    # the deployment handle itself: a call per task, spread by Ray's router
    workers: set[int] = set()
    owners: set[int] = set()
    deadline = time.monotonic() + WAIT
    while owners != set(replicas) and time.monotonic() < deadline:
        calls = [handle.process.remote(SumTask(n)) for n in range(100)]
        done = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
        assert [t.sum for t in done] == [sum(i * i for i in range(n)) for n in range(100)]
        workers |= {t.worker_pid for t in done}
        # each worker process is a child of the replica whose flow started it
        owners = {pid for pid in replicas for w in workers if w in children_of(pid)}
    assert owners == set(replicas), (workers, replicas)


async def test_flow_replica_subclassed_under_serve_deployment(cluster):
    from aqueduct.integrations.ray import FlowReplica

    @serve.deployment(name="subclassed", max_ongoing_requests=64)
    class Counting(FlowReplica):
        def __init__(self, batch_size: int) -> None:
            super().__init__(functools.partial(build_recorder, batch_size))

        def done(self) -> int:
            return self.flow.task_counts["done"]

    handle = serve.run(Counting.bind(4), name="subclassed", route_prefix=None)
    try:
        flow = FlowHandle(handle)
        tasks = [Task(value=i) for i in range(20)]
        await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
        assert max(t.batch_size or 0 for t in tasks) <= 4
        assert await asyncio.wait_for(handle.done.remote(), WAIT) == 20
    finally:
        serve.delete("subclassed")


async def test_autoscaling_config_passes_through(deploy):
    deployment = flow_deployment(
        build_recorder,
        name="autoscaled",
        autoscaling_config={"min_replicas": 2, "max_replicas": 3, "initial_replicas": 2},
        ray_actor_options={"num_cpus": 0.5},
    )
    replicas = await _replica_infos(deploy(deployment), 2)
    assert all(i["state"] == "running" for i in replicas.values())


async def test_a_replica_whose_flow_dies_is_replaced(deploy, tmp_path):
    starts = tmp_path / "starts"
    deployment = flow_deployment(
        functools.partial(build_mortal, str(starts)),
        name="mortal",
        health_check_period_s=0.5,
        health_check_timeout_s=5,
    )
    handle = deploy(deployment)
    flow = FlowHandle(handle)
    first = await _info(handle)
    # kill the worker until its respawns are given up: the flow cannot serve
    deadline = time.monotonic() + WAIT
    while (await _info(handle))["failure"] is None:
        assert time.monotonic() < deadline, "the flow never gave up its worker"
        try:
            await asyncio.wait_for(flow.process(Task(value=-1), timeout_sec=2), WAIT)
        except FlowError:  # the worker died with the task, as asked
            pass
        await asyncio.sleep(0.1)
    # Ray sees the failed health check and replaces the replica
    while (info := await _info(handle))["pid"] == first["pid"]:
        assert time.monotonic() < deadline, "the replica was not replaced"
        await asyncio.sleep(0.2)
    assert info["state"] == "running" and info["failure"] is None
    task = Task(value=6)
    assert await asyncio.wait_for(flow.process(task), WAIT) and task.result == 6
    while running(first["pid"]):  # the old replica is gone, with its workers
        assert time.monotonic() < deadline, "the old replica still runs"
        await asyncio.sleep(0.2)


async def test_a_killed_replica_fails_its_tasks_and_takes_its_workers(deploy, tmp_path):
    handle = deploy(flow_deployment(build_recorder, name="killed"))
    flow = FlowHandle(handle)
    replica = (await _info(handle))["pid"]
    await asyncio.wait_for(flow.process(Task(value=1)), WAIT)
    workers = children_of(replica)
    gate = Gate(tmp_path)  # never opened: the worker holds the batch
    in_flight = [
        asyncio.ensure_future(flow.process(Task(value=i).gated(gate), timeout_sec=10))
        for i in range(4)
    ]
    await gate.reached()  # in the replica's worker
    os.kill(replica, signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), WAIT)
    assert all(isinstance(r, FlowError) for r in results), results
    deadline = time.monotonic() + WAIT
    while any(running(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their replica"
        await asyncio.sleep(0.1)
    while True:  # Ray starts another replica, which serves
        try:
            task = Task(value=8)
            await asyncio.wait_for(flow.process(task), WAIT)
            break
        except FlowError:
            assert time.monotonic() < deadline, "no replica came back"
            await asyncio.sleep(0.2)
    assert task.trail == ["a"] and (await _info(handle))["pid"] != replica


async def test_deleting_the_app_stops_the_flow_gracefully(deploy, tmp_path):
    handle = deploy(flow_deployment(build_recorder, name="stopping"))
    flow = FlowHandle(handle)
    replica = (await _info(handle))["pid"]
    warm = Task(value=1)
    await asyncio.wait_for(flow.process(warm), WAIT)
    workers = children_of(replica)
    assert workers
    gate = Gate(tmp_path)
    in_flight = asyncio.ensure_future(flow.process(Task(value=2, sleep=0.3).gated(gate)))
    await gate.reached()  # in the replica's worker
    gate.open()
    await asyncio.to_thread(serve.delete, deploy_name(handle))
    assert await asyncio.wait_for(in_flight, WAIT)  # finished before the stop
    deadline = time.monotonic() + WAIT
    while any(running(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their replica"
        await asyncio.sleep(0.1)


def deploy_name(handle: Any) -> str:
    return handle.app_name


def build_dies_on_start() -> Flow:
    return Flow(DiesOnStart())


def test_a_flow_that_cannot_start_fails_the_deploy_with_its_reason(deploy):
    deployment = flow_deployment(
        build_dies_on_start, name="unstartable", max_constructor_retry_count=1
    )
    with pytest.raises(RuntimeError, match="unstartable"):
        deploy(deployment)
    # Ray Serve keeps the replica's exception as the deployment's status message
    apps = serve.status().applications.values()
    messages = [
        a.deployments["unstartable"].message for a in apps if "unstartable" in a.deployments
    ]
    assert any("WorkerStartError" in m and "exited while starting" in m for m in messages), messages
