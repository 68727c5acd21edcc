"""`make soak`: ten minutes (SOAK_SECONDS) of mixed load on a flow called
from this process and on a flow behind the Rust HTTP front (a server
process of its own), with a worker of each SIGKILLed every 30 s
(SOAK_KILL_EVERY):

- here, a new asyncio task per request, as a web server makes them:
  ``process`` calls, streams whose callers leave after the first part,
  tasks whose timeout passes while they are handled, handlers that raise;
- over HTTP, keep-alive clients, clients that send a request and close
  before its answer, and streams whose clients leave after the first part.

The RSS and open fds of this process, the server and every worker are
taken after a warm-up (SOAK_WARMUP seconds) and at the end, both with the
load paused; the growth per 100k requests of every process that lived
through both fails the run above 1 MiB or 0 fds. A worker that was killed
is not measured; the ones that replaced it are listed.

``python benches/soak.py --serve`` is the server process (it prints its port).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.exceptions import AqueductError, TaskTimeoutError
from aqueduct.logger import log
from web_workloads import children

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
WARMUP = float(os.environ.get("SOAK_WARMUP", "30"))
KILL_EVERY = float(os.environ.get("SOAK_KILL_EVERY", "30"))
#: Requests in flight at once, here and over HTTP.
CONCURRENCY = 48
HTTP_CLIENTS = 12
#: The limits, per 100k requests after the warm-up.
RSS_LIMIT_KIB = 1024
FD_LIMIT = 0


class Job(BaseTask):
    def __init__(self, x: int, sleep: float = 0.0, parts: int = 0, fail: bool = False) -> None:
        super().__init__()
        self.x, self.sleep, self.parts, self.fail = x, sleep, parts, fail
        self.y: int | None = None


class Work(BaseTaskHandler):
    """Doubles ``x`` after ``sleep`` (the batch's longest), emitting
    ``parts`` parts first; ``fail`` raises."""

    def handle(self, *tasks: Job) -> None:
        time.sleep(max(t.sleep for t in tasks))
        for task in tasks:
            if task.fail:
                raise ValueError("asked to fail")
            for part in range(task.parts):
                if not task.emit(part):
                    break  # its caller left
                time.sleep(0.002)
            task.y = (task.y if task.y is not None else task.x) * 2


def flow() -> Flow:
    return Flow(
        FlowStep(Work(), nprocs=2, batch_size=8, batch_timeout=0.002),
        FlowStep(Work(), batch_size=16),
        queue_full="reject",
    )


# -- the server process ----------------------------------------------------------------


def serve() -> None:
    from aqueduct.http import Request, serve

    def job(request: Request) -> Job:
        data = request.json()
        return Job(int(data["x"]), float(data.get("sleep", 0)), int(data.get("parts", 0)))

    def answer(task: Job) -> object:
        return {"y": task.y}

    log.setLevel(logging.CRITICAL)
    serve(
        flow(),
        routes={"/double": (job, answer), "/stream": (job, lambda task: None, True)},
        port=0,
        timeout=10,
        drain_delay=0,
        graceful_timeout=5,
        on_ready=lambda port: print("port", port, flush=True),
    )


# -- load -------------------------------------------------------------------------------


class Load:
    """Sends requests until ``stop`` while not ``paused``; counts outcomes."""

    def __init__(self, flow: Flow, port: int) -> None:
        self.flow, self.port = flow, port
        self.outcomes: Counter[str] = Counter()
        self.running = asyncio.Event()
        self.running.set()
        self.stopped = False
        self.in_flight = 0
        self.idle = asyncio.Event()  # nothing in flight

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    async def _one(self, send: Callable[[], Awaitable[str]]) -> None:
        self.in_flight += 1
        self.idle.clear()
        try:
            self.outcomes[await send()] += 1
        except TaskTimeoutError:
            self.outcomes["timeout"] += 1
        except AqueductError as exc:
            self.outcomes[type(exc).__name__] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.outcomes[f"http {type(exc).__name__}"] += 1
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    async def callers(self) -> None:
        """A new asyncio task per request, at most CONCURRENCY at once."""
        slots = asyncio.Semaphore(CONCURRENCY)
        pending: set[asyncio.Task[None]] = set()
        n = 0
        while not self.stopped:
            await self.running.wait()
            await slots.acquire()
            n += 1
            roll = random.random()
            if roll < 0.8:
                send = self._process(n)
            elif roll < 0.9:
                send = self._leave_stream(n)
            elif roll < 0.99:
                send = self._time_out(n)
            else:
                send = self._fail(n)
            task = asyncio.create_task(self._one(send))
            pending.add(task)
            task.add_done_callback(lambda t: (pending.discard(t), slots.release()))
        await asyncio.gather(*pending)

    def _process(self, n: int) -> Callable[[], Awaitable[str]]:
        async def send() -> str:
            job = Job(n)
            await self.flow.process(job, timeout_sec=10)
            return "done" if job.y == 4 * n else "wrong answer"

        return send

    def _leave_stream(self, n: int) -> Callable[[], Awaitable[str]]:
        async def send() -> str:
            async for _part in self.flow.stream(Job(n, parts=5), timeout_sec=10):
                break  # the caller leaves mid-way
            return "left a stream"

        return send

    def _time_out(self, n: int) -> Callable[[], Awaitable[str]]:
        async def send() -> str:
            await self.flow.process(Job(n, sleep=0.03), timeout_sec=0.01)
            return "done late"

        return send

    def _fail(self, n: int) -> Callable[[], Awaitable[str]]:
        async def send() -> str:
            await self.flow.process(Job(n, fail=True), timeout_sec=10)
            return "did not fail"

        return send

    # -- over HTTP --

    async def http_client(self, kind: str) -> None:
        """One client: keep-alive requests, requests it leaves, or streams it leaves."""
        n = 0
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []  # its connection
        while not self.stopped:
            await self.running.wait()
            n += 1
            if kind == "keep-alive":
                await self._one(partial(self._keep_alive, n, held))
            elif kind == "leaves":
                await self._one(partial(self._leave, "/double", {"x": n, "sleep": 0.02}))
                await asyncio.sleep(0.005)  # a share of the load, not most of it
            else:
                body = {"x": n, "parts": 20}
                await self._one(partial(self._leave, "/stream", body, first=True))

    async def _keep_alive(
        self, n: int, held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    ) -> str:
        if not held:
            held.append(await asyncio.open_connection("127.0.0.1", self.port))
        reader, writer = held[0]
        try:
            writer.write(request("/double", {"x": n}))
            status, body = await asyncio.wait_for(read_answer(reader), 10)
        except BaseException:
            held.clear()
            writer.close()
            raise
        if status != 200:
            return f"http {status}"
        return "http done" if json.loads(body)["y"] == 4 * n else "http wrong answer"

    async def _leave(self, path: str, body: dict[str, object], first: bool = False) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request(path, body))
            await writer.drain()
            if first:  # the head and the first part, then away
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        finally:
            writer.close()
        return "http left"


def request(path: str, body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: soak\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


# -- processes --------------------------------------------------------------------------


def usage(pid: int) -> tuple[int, int] | None:
    """RSS (KiB) and open fds of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


def roles(server: int) -> dict[int, str]:
    """Every process of the soak, by what it is."""
    me = os.getpid()
    served = set(children(server))
    named = {me: "caller", server: "server"}
    named |= {pid: "server worker" for pid in served}
    named |= {pid: "caller worker" for pid in children(me) if pid != server and pid not in served}
    return named


async def settle(load: Load) -> None:
    """Pauses the load until nothing is in flight, and a moment more."""
    load.running.clear()
    load.idle.clear()
    if load.in_flight:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.idle.wait(), 30)
    await asyncio.sleep(2)  # leaving clients' connections and streams end


def victim(server: int, measured: dict[int, str], turn: int) -> int | None:
    """The worker to kill: of the caller's flow and the server's in turn, a
    worker not measured (one that replaced an earlier victim), else the
    newest measured one."""
    kind = ("caller worker", "server worker")[turn % 2]
    workers = [pid for pid, role in roles(server).items() if role == kind]
    fresh = [pid for pid in workers if pid not in measured]
    pool = fresh or workers
    return max(pool) if pool else None


def main() -> int:
    log.setLevel(logging.CRITICAL)  # killed workers and raising handlers are logged
    server_proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = server_proc.stdout.readline()  # type: ignore[union-attr]
        return asyncio.run(soak(server_proc, int(line.split()[-1])))
    finally:
        server_proc.send_signal(signal.SIGTERM)
        try:
            server_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server_proc.kill()


async def soak(server_proc: subprocess.Popen[str], port: int) -> int:
    """The load, the kills and the figures."""
    caller_flow = flow()
    caller_flow.start(timeout=60)
    load = Load(caller_flow, port)
    kinds = ["keep-alive"] * (HTTP_CLIENTS - 4) + ["leaves"] * 2 + ["streams"] * 2
    tasks = [asyncio.create_task(load.callers())]
    tasks += [asyncio.create_task(load.http_client(kind)) for kind in kinds]
    await asyncio.sleep(WARMUP)
    await settle(load)
    measured = roles(server_proc.pid)
    before = {pid: usage(pid) for pid in measured}
    counted = load.requests
    load.running.set()
    started = time.monotonic()
    killed: list[int] = []
    turn = 0
    while (left := SECONDS - (time.monotonic() - started)) > 0:
        await asyncio.sleep(min(KILL_EVERY, left))
        if left > KILL_EVERY / 2 and (pid := victim(server_proc.pid, measured, turn)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            turn += 1
    await settle(load)
    after = {pid: usage(pid) for pid in roles(server_proc.pid)}
    requests = load.requests - counted
    elapsed = time.monotonic() - started
    load.stopped = True
    load.running.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await caller_flow.stop()
    return report(load, requests, elapsed, measured, before, after, killed)


def report(
    load: Load,
    requests: int,
    elapsed: float,
    measured: dict[int, str],
    before: dict[int, tuple[int, int] | None],
    after: dict[int, tuple[int, int] | None],
    killed: list[int],
) -> int:
    per = 100_000 / max(requests, 1)
    print(
        f"soak: {requests:,} requests in {elapsed:.0f} s after a {WARMUP:.0f} s warm-up "
        f"({requests / elapsed:,.0f}/s), {len(killed)} workers SIGKILLed"
    )
    print("  outcomes: " + ", ".join(f"{k} {v:,}" for k, v in load.outcomes.most_common()))
    print(f"  {'process':<14} {'pid':>7} {'RSS MiB':>17} {'fds':>9} {'per 100k':>20}")
    failed = []
    for pid, role in measured.items():
        start, end = before.get(pid), after.get(pid)
        if start is None or end is None:
            print(f"  {role:<14} {pid:>7}   (killed)")
            continue
        rss = (end[0] - start[0]) * per
        fds = (end[1] - start[1]) * per
        print(
            f"  {role:<14} {pid:>7} {start[0] / 1024:7.1f} -> {end[0] / 1024:6.1f} "
            f"{start[1]:>4} -> {end[1]:<3} {rss:+8.1f} KiB {fds:+6.2f} fds"
        )
        if rss > RSS_LIMIT_KIB or fds > FD_LIMIT:
            failed.append(f"{role} {pid}")
    for pid, use in after.items():
        if pid not in measured and use is not None:
            print(
                f"  {'respawned':<14} {pid:>7} {'':>7}    {use[0] / 1024:6.1f} {'':>7}{use[1]:<3}"
            )
    bad = {
        k: v for k, v in load.outcomes.items() if "wrong" in k or k in ("did not fail", "done late")
    }
    verdict = "FAILED: " + ", ".join(failed) if failed or bad else "ok"
    print(f"  limits per 100k requests: {RSS_LIMIT_KIB} KiB, {FD_LIMIT} fds: {verdict}")
    if bad:
        print(f"  wrong outcomes: {bad}")
    return 1 if failed or bad else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        sys.exit(main())
