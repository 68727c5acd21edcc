"""`make demo`: the digits service on a free localhost port, a short load of
real requests (the held-out digits), then accuracy, latency and throughput.

    python examples/digits/demo.py          # DEMO_REQUESTS, DEMO_CONCURRENCY to taste
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import time
from pathlib import Path

from aiohttp import ClientSession, TCPConnector, web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aqueduct.logger import log

from examples.digits.service import prepare_app, split_digits

REQUESTS = int(os.environ.get("DEMO_REQUESTS", "3000"))
CONCURRENCY = int(os.environ.get("DEMO_CONCURRENCY", "32"))


def progress(done: int, total: int) -> None:
    bar = "#" * (done * 40 // total)
    print(f"\r  [{bar:<40}] {done}/{total}", end="", flush=True)


async def load(url: str) -> tuple[list[float], float, int, int]:
    _, (images, labels) = split_digits()
    latencies: list[float] = []
    correct = errors = done = 0
    queue = list(range(REQUESTS))

    async with ClientSession(connector=TCPConnector(limit=CONCURRENCY)) as session:

        async def caller() -> None:
            nonlocal correct, errors, done
            while queue:
                i = queue.pop() % len(labels)
                start = time.perf_counter()
                async with session.post(url, json={"pixels": images[i].tolist()}) as response:
                    if response.status == 200:
                        correct += (await response.json())["digit"] == labels[i]
                    else:
                        errors += 1
                latencies.append(time.perf_counter() - start)
                done += 1
                if done % max(1, REQUESTS // 40) == 0 or done == REQUESTS:
                    progress(done, REQUESTS)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    print()
    return latencies, elapsed, correct, errors


async def main() -> None:
    log.setLevel(logging.WARNING)
    runner = web.AppRunner(prepare_app())
    await runner.setup()  # starts the flow: preprocessing and model workers
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/predict"
    print(f"digits demo: {url} — {REQUESTS} requests, {CONCURRENCY} concurrent callers")
    try:
        latencies, elapsed, correct, errors = await load(url)
    finally:
        await runner.cleanup()  # stops the flow and its workers
    latencies.sort()
    n = len(latencies)
    print(f"  accuracy:   {correct / max(1, n - errors):.1%} on held-out digits ({errors} errors)")
    print(f"  throughput: {n / elapsed:,.0f} req/s")
    print(
        f"  latency:    p50 {latencies[n // 2] * 1e3:.2f} ms, "
        f"p99 {latencies[int(n * 0.99)] * 1e3:.2f} ms, "
        f"mean {statistics.fmean(latencies) * 1e3:.2f} ms"
    )
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
