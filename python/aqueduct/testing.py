"""Fault injection for tests of aqueduct's recovery — not for production.

The hooks exist only in an extension built with the ``fault-injection``
cargo feature (``make build`` and ``maturin develop --features
fault-injection`` turn it on; wheels from ``make wheel`` or PyPI leave it
off). :func:`fault_injection_available` tells which build this is; every hook
raises :class:`RuntimeError` in a build without them.
"""

from __future__ import annotations

from . import _core
from .flow import Flow, runtime_of

__all__ = ["abandon_push", "fault_injection_available"]


def fault_injection_available() -> bool:
    """True when this build of the extension has the fault-injection hooks."""
    return hasattr(_core.Queue, "abandon_push")


def abandon_push(flow: Flow, step: int = 0, payload_len: int = 100) -> None:
    """Leaves an unfinished message at the tail of step ``step``'s queue of a
    running ``flow``: what a producer killed between claiming room in the
    queue and publishing its message leaves behind. The flow's recovery must
    skip it once it sees a worker died (``Flow`` does, within a few monitor
    ticks)."""
    if not fault_injection_available():
        raise RuntimeError(
            "this build of aqueduct has no fault-injection hooks: build it with "
            "`maturin develop --features fault-injection` (make build does)"
        )
    topology = runtime_of(flow).topology
    if topology is None:
        raise RuntimeError("the flow is not running")
    if not 0 <= step < topology.steps:
        raise ValueError(f"step must be in 0..{topology.steps - 1}, got {step}")
    topology.queues[step].abandon_push(payload_len)
