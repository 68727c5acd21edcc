"""How user code starts a Flow: scripts without a ``__main__`` guard, code on
stdin, ``python -c``, ``python -m``, IPython, and servers started by a CLI.
Workers are fresh interpreters on aqueduct's own entry point: the user's
module body runs once, in the parent, and what it defines reaches the
workers by value."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from support import descendants_of, running

RUN_TIMEOUT = 90  # bound on every child interpreter these tests start

#: A service as users write it: no guard, everything in __main__, the flow
#: started at module level, a handle_condition lambda, and a result class the
#: parent never sends (the worker must find __main__.Doubled to send it back).
SCRIPT = textwrap.dedent(
    """
    import asyncio
    from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep

    print("module body ran", flush=True)


    class Doubled:
        def __init__(self, value):
            self.value = value


    class Task(BaseTask):
        def __init__(self, number):
            super().__init__()
            self.number = number
            self.result = None


    class Double(BaseTaskHandler):
        def handle(self, *tasks):
            for task in tasks:
                task.result = Doubled(task.number * 2)


    flow = Flow(
        FlowStep(Double(), nprocs=2, handle_condition=lambda task: task.number >= 0),
        FlowStep(Double(), handle_condition=lambda task: task.number > 100),
        mp_start_method="spawn",
    )
    flow.start(timeout=30)


    async def main():
        tasks = [Task(n) for n in range(-2, 40)]
        await asyncio.gather(*(flow.process(t, timeout_sec=20) for t in tasks))
        for t in tasks:
            expected = None if t.number < 0 else 2 * t.number
            got = None if t.result is None else t.result.value
            assert type(t.result) is (Doubled if t.number >= 0 else type(None)), t.result
            assert got == expected, (t.number, got)
        print("results ok", flush=True)
        await flow.stop()


    asyncio.run(main())
    """
)


def _check(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "results ok" in out.stdout, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("module body ran") == 1, out.stdout


def _python(
    args: list[str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs a fresh interpreter (bounded), checks it succeeded, returns it."""
    out = subprocess.run(
        [sys.executable, *args],
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    _check(out)
    return out


def test_a_script_without_a_main_guard(tmp_path):
    (tmp_path / "service.py").write_text(SCRIPT)
    _python(["service.py"], tmp_path)


def test_code_piped_to_python_stdin(tmp_path):
    _python(["-"], tmp_path, stdin=SCRIPT)


def test_python_dash_c(tmp_path):
    _python(["-c", SCRIPT], tmp_path)


def test_python_dash_m_runs_a_package_main(tmp_path):
    package = tmp_path / "service"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(SCRIPT)
    _python(["-m", "service"], tmp_path)


def test_ipython_cells(tmp_path):
    ipython = Path(sys.executable).with_name("ipython")
    if not ipython.exists():
        pytest.skip("IPython is not installed")
    # a notebook's cells: __main__ has no file, top-level await
    cells = SCRIPT.replace("asyncio.run(main())", "await main()")
    out = subprocess.run(
        [str(ipython), "--no-banner", "--quick", "--colors=NoColor", "-c", cells],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    _check(out)


def test_module_level_work_is_not_repeated_in_workers(tmp_path):
    """A model loaded at module level is loaded once, not once per worker."""
    loads = tmp_path / "loads.txt"
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep

        with open({str(loads)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        MODEL = {{"scale": 3}}  # stands for a model loaded at import


        class Task(BaseTask):
            def __init__(self, number):
                super().__init__()
                self.number = number
                self.result = None


        class Scale(BaseTaskHandler):
            def handle(self, *tasks):
                for task in tasks:
                    task.result = task.number * MODEL["scale"]


        if __name__ == "__main__":
            flow = Flow(FlowStep(Scale(), nprocs=3))
            flow.start(timeout=30)
            task = Task(5)
            asyncio.run(flow.process(task, timeout_sec=20))
            assert task.result == 15
            print("module body ran\\nresults ok")
            asyncio.run(flow.stop())
        """
    )
    (tmp_path / "service.py").write_text(script)
    _python(["service.py"], tmp_path)
    assert loads.read_text().split() == [loads.read_text().split()[0]]


def test_main_definitions_reach_each_worker_once(tmp_path):
    """Tasks of __main__ classes travel by name: each worker fetches a
    definition once, however many tasks it handles."""
    script = SCRIPT.replace(
        'print("module body ran", flush=True)',
        'print("module body ran", flush=True)\n'
        "import logging, sys\n"
        "from aqueduct.logger import log\n"
        "log.setLevel(logging.DEBUG)\n"
        "log.addHandler(logging.StreamHandler(sys.stdout))",
    )
    script = script.replace("range(-2, 40)", "range(-2, 400)")
    out = _python(["-c", script], tmp_path)
    for name in ("Task", "Doubled"):
        sent = out.stdout.count(f"Sent __main__.{name} to a worker of")
        assert 1 <= sent <= 3, (name, sent)  # at most once for each of the 3 workers


def test_a_main_class_that_cannot_be_sent_fails_its_task_clearly(tmp_path):
    script = textwrap.dedent(
        """
        import asyncio, threading
        from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
        from aqueduct.exceptions import TaskSerializationError


        class Locked(BaseTask):
            lock = threading.Lock()  # a class cloudpickle cannot send

            def __init__(self):
                super().__init__()
                self.result = None


        class Plain(BaseTask):
            def __init__(self):
                super().__init__()
                self.result = None


        class Mark(BaseTaskHandler):
            def handle(self, *tasks):
                for task in tasks:
                    task.result = "done"


        async def main():
            flow = Flow(FlowStep(Mark()))
            flow.start(timeout=30)
            try:
                await flow.process(Locked(), timeout_sec=20)
            except TaskSerializationError as exc:
                assert "Locked" in str(exc), exc
            else:
                raise AssertionError("a task whose class cannot reach workers went through")
            task = Plain()
            await flow.process(task, timeout_sec=20)
            assert task.result == "done"
            print("module body ran\\nresults ok")
            await flow.stop()


        asyncio.run(main())
        """
    )
    _python(["-c", script], tmp_path)


# -- servers started by a command-line tool --------------------------------

APP = textwrap.dedent(
    """
    from aiohttp import web
    from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep


    class Task(BaseTask):
        def __init__(self, number):
            super().__init__()
            self.number = number
            self.result = None


    class Double(BaseTaskHandler):
        def handle(self, *tasks):
            for task in tasks:
                task.result = task.number * 2


    async def double(request):
        task = Task(int(request.match_info["n"]))
        await request.app["flow"].process(task, timeout_sec=20)
        return web.Response(text=str(task.result))


    async def flow_context(app):
        app["flow"] = Flow(FlowStep(Double(), nprocs=2))
        app["flow"].start(timeout=30)
        yield
        await app["flow"].stop()


    def init(argv=None):
        app = web.Application()
        app.router.add_get("/double/{n}", double)
        app.cleanup_ctx.append(flow_context)
        return app


    async def factory():
        return init()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(command: list[str], cwd: Path, port: int) -> None:
    """Starts a server, checks that it serves through the flow, stops it with
    SIGTERM and checks that nothing it started is left running. (Workers
    import the app module by name, as any process using its classes would.)"""
    (cwd / "app.py").write_text(APP)
    server = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        answer = _get(f"http://127.0.0.1:{port}/double/21", server)
        assert answer == "42"
        started = descendants_of(server.pid)
        assert len(started) >= 2  # the flow's workers, at least
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=RUN_TIMEOUT)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=RUN_TIMEOUT)
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in started):
        assert time.monotonic() < deadline, "processes outlived the server"
        time.sleep(0.05)


def _get(url: str, server: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        assert server.poll() is None, server.communicate()[0]
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                return str(response.read().decode())
        except OSError:
            assert time.monotonic() < deadline, "the server did not answer"
            time.sleep(0.2)


def test_aiohttp_web_command_line(tmp_path):
    pytest.importorskip("aiohttp")
    port = _free_port()
    command = [sys.executable, "-m", "aiohttp.web", "-H", "127.0.0.1", "-P", str(port), "app:init"]
    _serve(command, tmp_path, port)


def test_gunicorn_with_aiohttp_workers(tmp_path):
    pytest.importorskip("aiohttp")
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed")
    port = _free_port()
    command = [
        str(gunicorn),
        "app:factory",
        "--worker-class",
        "aiohttp.GunicornWebWorker",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
    ]
    _serve(command, tmp_path, port)


def test_fork_start_method_still_works(tmp_path):
    (tmp_path / "service.py").write_text(SCRIPT.replace('"spawn"', '"fork"'))
    _python(["service.py"], tmp_path)
