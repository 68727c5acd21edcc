"""How a latency-objective sweep's points are read (``make bench-slo``'s
report): by ``sweep.py`` for its targets, ``benches/publish.py`` for the
README's headline and ``docs/_ext/bench_tables.py`` for the docs' table."""

from __future__ import annotations

from typing import Any

#: The share of requests answered within the objective that counts as held.
HELD = 0.99


def at_objective(points: list[dict[str, Any]]) -> float:
    """The highest offered rate at which >= 99 % were answered in time."""
    return max((p["rate"] for p in points if p["within_share"] >= HELD), default=0.0)


def point_at(points: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    """The point measured at offered ``rate``, if there is one."""
    return next((p for p in points if abs(p["rate"] - rate) < 0.5), None)
