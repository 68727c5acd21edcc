"""Flow metrics: recorded in shared memory by the workers (Rust side), read by
the parent, exported to StatsD (upstream's contract) or Prometheus.

``Flow(metrics_enabled=True)`` (the default) records; give
``metrics_exporter=ToStatsDMetricsExporter(statsd_client)`` to push them every
``export_period`` seconds, or register the flow with Prometheus
(``aqueduct.metrics.prometheus.register(flow)``) to have them scraped.
"""

from .base import (
    AQUEDUCT,
    MAIN_PROCESS,
    FlowMetrics,
    Histogram,
    MetricsTypes,
    StepMetrics,
)
from .collect import Collector
from .export import Exporter, StatsDBuffer, ToStatsDMetricsExporter

__all__ = [
    "AQUEDUCT",
    "MAIN_PROCESS",
    "Collector",
    "Exporter",
    "FlowMetrics",
    "Histogram",
    "MetricsTypes",
    "StatsDBuffer",
    "StepMetrics",
    "ToStatsDMetricsExporter",
]
