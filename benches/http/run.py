"""`make bench-http`: the no-op and model-emulator services on aqueduct (its
Rust HTTP front; one aiohttp process, and several sharing one Flow) and on mosec, loaded by wrk at
1, 32 and 256 connections, back to back; then the streaming decode
emulator (``decode_emulator.py``) on aqueduct's front and on mosec's SSE,
loaded by ``stream_client.py`` at 32 and 256 connections; between them,
aqueduct's front at 256 and 10,000 keep-alive connections. Prints tables;
writes ``bench-report/http.json`` (a partial run, ``--only`` and the like, writes none).

Needs wrk (Debian package) and mosec in MOSEC_PYTHON's environment.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from report import FOLDER, Report  # noqa: E402

PORT = 18080


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def to_ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(
    connections: int, seconds: int, script: Path = HERE / "post.lua", path: str = "/inference"
) -> dict[str, float]:
    """wrk's rate, p50/p99 (ms) and errors at ``connections`` for ``seconds``,
    each request as ``script`` makes it, to ``path``."""
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "2" if connections > 1 else "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{PORT}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for q in ("50", "99"):
        result[f"p{q}_ms"] = to_ms(re.search(rf"\s{q}%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    # errors: answers other than 2xx/3xx, and wrk's socket errors by kind
    # (a request unanswered within wrk's 2 s is a timeout)
    kinds = {"non_2xx": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0}
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        kinds["non_2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        kinds.update(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    result["errors"] = sum(kinds.values())
    result.update({f"errors_{kind}": float(n) for kind, n in kinds.items()})
    return result


def serve(command: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_port(PORT)
    time.sleep(1.0)  # workers warm
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return  # it exited already
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    time.sleep(0.5)


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def streaming(mosec_python: str | None, seconds: int) -> dict[str, dict[str, dict[str, float]]]:
    """The streaming runs: per server, per connection count."""
    import asyncio

    from stream_client import load

    targets = {"aqueduct http": [sys.executable, str(HERE / "stream_aqueduct.py")]}
    if mosec_python:
        targets["mosec sse"] = [mosec_python, str(HERE / "stream_mosec.py"), "--timeout", "120000"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, command in targets.items():
        proc = serve([*command, "--port", str(PORT)])
        try:
            for connections in (32, 256):
                print(f"stream {name:<12} {connections:>3} connections ...", file=sys.stderr)
                asyncio.run(load(PORT, "/inference", connections, 3))  # warm-up
                before = server_cpu_s(proc.pid)
                result = asyncio.run(load(PORT, "/inference", connections, seconds))
                front = server_cpu_s(proc.pid) - before
                result["front_us_per_part"] = front / max(result["tokens"], 1) * 1e6
                out.setdefault(name, {})[str(connections)] = result
        finally:
            stop(proc)
    return out


def streaming_lines(results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    columns = ("stream", "conns", "tokens/s", "ttft p50", "ttft p99", "front µs", "errors")
    lines = ["{:<14} {:>5} {:>10} {:>9} {:>9} {:>9} {:>7}".format(*columns)]
    for name, by_conn in results.items():
        for connections, r in by_conn.items():
            front = r["front_us_per_part"] if name.startswith("aqueduct") else float("nan")
            lines.append(
                f"{name:<14} {connections:>5} {r['tokens_per_s']:>10,.0f} "
                f"{r['ttft_p50_ms']:>9.1f} {r['ttft_p99_ms']:>9.1f} {front:>9.2f} "
                f"{r['errors']:>7.0f}"
            )
    ours, theirs = results.get("aqueduct http", {}), results.get("mosec sse", {})
    for connections in ours:
        if connections in theirs:
            gain = ours[connections]["tokens_per_s"] / theirs[connections]["tokens_per_s"]
            p99 = (ours[connections]["ttft_p99_ms"], theirs[connections]["ttft_p99_ms"])
            lines.append(
                f"{connections} connections: {gain:.2f}x mosec's tokens/s (goal 1.5x);"
                f" p99 time to first token {p99[0]:.1f} vs {p99[1]:.1f} ms"
            )
    lines.append(
        "front µs: CPU of aqueduct's web process (Rust front) per streamed part (goal <= 3)"
    )
    return lines


#: The many-connections stage: aqueduct's front at the usual 256 and at
#: this many keep-alive connections (its default ``max_connections``).
MANY_CONNECTIONS = 10_000
MANY_SHARE_GOAL = 0.8


def many_connections(seconds: int) -> dict[str, dict[str, float]]:
    """The no-op service on aqueduct's front under 256, then 10,000 wrk
    connections: what a crowd of keep-alive clients costs the rate."""
    command = [sys.executable, str(HERE / "rust_front_service.py"), "--port", str(PORT)]
    proc = serve([*command, "--service", "noop"])
    out = {}
    try:
        for connections in (256, MANY_CONNECTIONS):
            print(f"many   aqueduct http {connections:>5} connections ...", file=sys.stderr)
            out[str(connections)] = wrk(connections, seconds)
    finally:
        stop(proc)
    return out


def many_lines(results: dict[str, dict[str, float]]) -> list[str]:
    base, many = results["256"], results[str(MANY_CONNECTIONS)]
    share = many["rps"] / base["rps"]
    kinds = ", ".join(
        f"{key.removeprefix('errors_')} {n:.0f}"
        for key, n in many.items()
        if key.startswith("errors_") and n
    )
    errors = f"{many['errors']:.0f} errors" + (f" ({kinds})" if kinds else "")
    return [
        f"{MANY_CONNECTIONS:,} keep-alive connections: {many['rps']:,.0f} req/s, p50 "
        f"{many['p50_ms']:.1f} ms, p99 {many['p99_ms']:.1f} ms, {errors} — "
        f"{share:.2f} of the 256-connection rate ({base['rps']:,.0f} req/s, p99 "
        f"{base['p99_ms']:.1f} ms; goal {MANY_SHARE_GOAL})"
    ]


def wrk_lines(results: dict[str, dict[str, dict[str, dict[str, float]]]]) -> list[str]:
    """One row per service, server and connection count; then each aqueduct
    server's rate against mosec's at the same point."""
    columns = ("service", "server", "conns", "req/s", "p50 ms", "p99 ms", "errors")
    lines = ["{:<7} {:<14} {:>5} {:>10} {:>8} {:>8} {:>7}".format(*columns)]
    for service, by_server in results.items():
        for name, by_conn in by_server.items():
            for connections, r in by_conn.items():
                lines.append(
                    f"{service:<7} {name:<14} {connections:>5} {r['rps']:>10,.0f} "
                    f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>7.0f}"
                )
    for service, by_server in results.items():
        mosec = by_server.get("mosec", {})
        for name, by_conn in by_server.items():
            if name == "mosec" or not mosec:
                continue
            gains = ", ".join(
                f"{by_conn[c]['rps'] / mosec[c]['rps']:.2f}x at {c}" for c in by_conn if c in mosec
            )
            lines.append(f"{service} {name}: {gains} connections of mosec's req/s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--mosec-python", default=os.environ.get("MOSEC_PYTHON"))
    parser.add_argument(
        "--servers", type=int, default=2, help="server processes of the shared-Flow run"
    )
    parser.add_argument("--report", default=str(FOLDER), help="folder for the report (http.json)")
    parser.add_argument("--only", help="comma-separated server names to run (default: all)")
    parser.add_argument("--stream-only", action="store_true", help="the streaming runs only")
    parser.add_argument("--many-only", action="store_true", help="the 10,000-connection stage only")
    args = parser.parse_args()
    report = Report("http", "make bench-http")
    if args.many_only:
        report.data["many_connections"] = many = many_connections(args.seconds)
        report.section("many", many_lines(many))
        return  # a partial run: no report
    if args.stream_only:
        report.data["stream"] = stream = streaming(args.mosec_python, args.seconds)
        report.section("stream", streaming_lines(stream))
        return

    targets = {
        "aqueduct http": [
            sys.executable,
            str(HERE / "rust_front_service.py"),
            "--port",
            str(PORT),
        ],
        "aqueduct": [sys.executable, str(HERE / "aqueduct_service.py"), "--port", str(PORT)],
        f"aqueduct x{args.servers}": [
            sys.executable,
            str(HERE / "aqueduct_service.py"),
            "--port",
            str(PORT),
            "--servers",
            str(args.servers),
        ],
    }
    if args.mosec_python:
        targets["mosec"] = [
            args.mosec_python,
            str(HERE / "mosec_service.py"),
            "--port",
            str(PORT),
            "--timeout",
            "30000",
        ]
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        targets = {name: command for name, command in targets.items() if name in wanted}
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for service in ("noop", "model"):
        for name, command in targets.items():
            proc = serve([*command, "--service", service])
            try:
                for connections in (1, 32, 256):
                    print(
                        f"{service:<6} {name:<12} {connections:>3} connections ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    results.setdefault(service, {}).setdefault(name, {})[str(connections)] = wrk(
                        connections, args.seconds
                    )
            finally:
                stop(proc)
    report.data.update(results)
    report.section("wrk", wrk_lines(results))
    report.data["many_connections"] = many = many_connections(args.seconds)
    report.section("many", many_lines(many))
    report.data["stream"] = stream = streaming(args.mosec_python, args.seconds)
    report.section("stream", streaming_lines(stream))
    if not args.only:
        report.write(Path(args.report))


if __name__ == "__main__":
    main()
