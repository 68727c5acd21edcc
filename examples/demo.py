"""`make demo`: starts the Getting Started service (examples/aiohttp_sum.py) on
a free localhost port, sends it a short load of real HTTP requests, prints
latency and throughput, and stops cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import time

from aiohttp import ClientSession, TCPConnector, web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aiohttp_sum import prepare_app
from aqueduct.logger import log

REQUESTS = int(os.environ.get("DEMO_REQUESTS", "5000"))
CONCURRENCY = int(os.environ.get("DEMO_CONCURRENCY", "32"))
PER_CALLER = max(1, REQUESTS // CONCURRENCY)
TOTAL = PER_CALLER * CONCURRENCY
NUMBER = 100  # the model sums squares up to this


async def _load(url: str) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    done = 0
    expected = sum(i * i for i in range(NUMBER))

    async with ClientSession(connector=TCPConnector(limit=CONCURRENCY)) as session:

        async def caller(count: int) -> None:
            nonlocal errors, done
            for _ in range(count):
                start = time.perf_counter()
                async with session.post(url, data=str(NUMBER).encode()) as response:
                    ok = response.status == 200 and (await response.json())["result"] == expected
                latencies.append(time.perf_counter() - start)
                errors += not ok
                done += 1
                if done % max(1, TOTAL // 20) == 0 or done == TOTAL:
                    bar = "#" * (done * 40 // TOTAL)
                    print(f"\r  [{bar:<40}] {done}/{TOTAL}", end="", flush=True)

        started = time.perf_counter()
        await asyncio.gather(*(caller(PER_CALLER) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    print()
    return latencies, elapsed, errors


async def main() -> None:
    log.setLevel(logging.WARNING)
    app = prepare_app()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/sum"
    print(f"aqueduct demo: {url} — {TOTAL} requests, {CONCURRENCY} concurrent callers")
    try:
        latencies, elapsed, errors = await _load(url)
    finally:
        await runner.cleanup()  # stops the flow (on_cleanup)
    latencies.sort()
    n = len(latencies)
    print(f"  requests:   {n} ({errors} errors)")
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
