"""Shared fixtures. Every flow a test builds is stopped at teardown, so a
failing test never leaves worker processes behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aqueduct import Flow, FlowStep
from aqueduct.handler import BaseTaskHandler

#: Bound for starting a flow in tests: spawning interpreters takes ~0.1 s each.
START_TIMEOUT = 30


@pytest.fixture
async def make_flow() -> AsyncIterator[Callable[..., Flow]]:
    """Builds and starts flows; stops whatever is still running afterwards."""
    flows: list[Flow] = []

    def factory(*steps: FlowStep | BaseTaskHandler, start: bool = True, **kwargs) -> Flow:
        flow = Flow(*steps, **kwargs)
        flows.append(flow)
        if start:
            flow.start(timeout=START_TIMEOUT)
        return flow

    yield factory
    for flow in flows:
        await asyncio.wait_for(flow.stop(graceful=False), timeout=30)
