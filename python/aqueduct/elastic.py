"""How an elastic step sizes itself: ``FlowStep(handler, nprocs=(1, 8))`` or
``nprocs=Elastic(1, 8, ...)``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Elastic"]


@dataclass(frozen=True)
class Elastic:
    """A step's worker count between ``min`` and ``max``.

    The step starts ``min`` workers. When every worker is busy and tasks
    have waited in the step's queue for ``grow_after`` seconds, it starts as
    many more as the queue needs (up to ``max``) — but no more than the idle
    cores of the machine can run, given the share of a core its workers use,
    unless ``oversubscribe=True`` (a handler that waits on an accelerator or
    the network keeps no core busy, so such a step grows freely). When, for
    ``shrink_after`` seconds, fewer workers were needed than run, the idle
    ones beyond that need (and beyond ``min``) finish what they hold and exit.
    """

    min: int
    max: int
    grow_after: float = 0.05
    shrink_after: float = 10.0
    oversubscribe: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.min, bool) or isinstance(self.max, bool):
            raise TypeError("Elastic(min, max) takes numbers of processes")
        if int(self.min) < 1 or int(self.max) < int(self.min):
            raise ValueError(
                f"an elastic step needs 1 <= min <= max, got min={self.min}, max={self.max}"
            )
        if not self.grow_after >= 0:
            raise ValueError(f"grow_after must be >= 0, got {self.grow_after}")
        if not self.shrink_after > 0:
            raise ValueError(f"shrink_after must be > 0, got {self.shrink_after}")
        object.__setattr__(self, "min", int(self.min))
        object.__setattr__(self, "max", int(self.max))
