"""Which metrics a flow collects (upstream's ``Collector`` contract)."""

from __future__ import annotations

from collections.abc import Iterable

from .base import MetricsTypes


class Collector:
    """``collectible_metrics``: the kinds of metrics to collect (default all).
    An empty list turns collection off, as ``Flow(metrics_enabled=False)``."""

    def __init__(self, collectible_metrics: Iterable[MetricsTypes] | None = None) -> None:
        self.collectible = (
            set(MetricsTypes) if collectible_metrics is None else set(collectible_metrics)
        )

    def is_collectible(self, kind: MetricsTypes) -> bool:
        return kind in self.collectible
