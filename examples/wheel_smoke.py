"""Checks an installed wheel (`make wheel-test`): imports aqueduct from
site-packages, not the source tree, and serves the README's quick start
(examples/aiohttp_sum.py) over real HTTP. A release wheel has no
fault-injection hooks."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aqueduct
from aiohttp import ClientSession, web
from aiohttp_sum import prepare_app
from aqueduct.testing import fault_injection_available

WHERE = Path(aqueduct.__file__).resolve()


async def main() -> None:
    assert "site-packages" in WHERE.parts, f"aqueduct imported from {WHERE}, not the wheel"
    assert not fault_injection_available(), "a release wheel carries fault-injection hooks"
    runner = web.AppRunner(prepare_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with ClientSession() as session:

            async def ask(n: int) -> int:
                async with session.post(f"http://127.0.0.1:{port}/sum", data=str(n)) as reply:
                    return int((await reply.json())["result"])

            answers = await asyncio.wait_for(asyncio.gather(*(ask(n) for n in range(50))), 30)
    finally:
        await runner.cleanup()
    assert answers == [sum(i * i for i in range(n)) for n in range(50)], answers
    print(f"wheel OK: aqueduct from {WHERE.parent}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    asyncio.run(main())
