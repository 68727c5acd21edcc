"""How fast the Rust front writes big answers: a served flow answers 64 MiB
(the same bytes each time, made once, so what is measured is the answer's
way out: the worker places it in its arena, the front writes it to the
socket from there), read by one keep-alive client. Prints the median and
best rates, and the CPU the server's processes used per answer."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "tests" / "served_flow.py"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import FOLDER, Report  # noqa: E402


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children so far (live ones, from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _answer(sock: socket.socket, request: bytes, buf: bytearray) -> int:
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    lines, rest = head.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1])
        for line in lines.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    got = len(rest)
    while got < length:
        got += sock.recv_into(buf)
    return length


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64 << 20)
    parser.add_argument("--answers", type=int, default=20)
    parser.add_argument("--report", default=str(FOLDER), help="folder for the report")
    args = parser.parse_args()
    env = {**os.environ, "BIG_ANSWER": str(args.size)}
    proc = subprocess.Popen(
        [sys.executable, str(SERVICE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        port = int(proc.stdout.readline().split()[-1])  # type: ignore[union-attr]
        body = b'{"x": "big answer"}'
        request = (
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        buf = bytearray(1 << 24)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for _ in range(3):  # warm: the answer made, the arena's pages faulted
                _answer(sock, request, buf)
            took = []
            cpu = _cpu(proc.pid)
            for _ in range(args.answers):
                start = time.perf_counter()
                assert _answer(sock, request, buf) == args.size
                took.append(time.perf_counter() - start)
            cpu = _cpu(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    mib = args.size / (1 << 20)
    median = statistics.median(took)
    report = Report("big_answer", "make bench-http")
    report.data = {
        "size": args.size,
        "answers": args.answers,
        "median_gb_s": args.size / median / 1e9,
        "best_gb_s": args.size / min(took) / 1e9,
        "server_cpu_ms": cpu / args.answers * 1e3,
    }
    report.section(
        "big_answer",
        [
            f"big answers ({mib:.0f} MiB, {args.answers}, one client): median"
            f" {median * 1e3:.1f} ms = {report.data['median_gb_s']:.2f} GB/s,"
            f" best {report.data['best_gb_s']:.2f} GB/s;"
            f" server CPU {report.data['server_cpu_ms']:.1f} ms per answer"
        ],
    )
    report.write(Path(args.report))


if __name__ == "__main__":
    main()
