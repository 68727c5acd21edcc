"""The model every framework in ``make bench-slo`` serves: a batched model
that costs 2 ms + 0.2 ms per item (sleeping, as a GPU would keep the CPU
free), batches of at most 32 — its limit is 32 items per 8.4 ms, 3,810
requests/s — and the latency objective they are held to."""

from __future__ import annotations

import time

FIXED_S = 0.002
PER_ITEM_S = 0.0002
MAX_BATCH = 32
OBJECTIVE_S = 0.05
#: Requests per second the model alone can do: full batches back to back.
LIMIT = MAX_BATCH / (FIXED_S + PER_ITEM_S * MAX_BATCH)


def run_batch(size: int) -> None:
    time.sleep(FIXED_S + PER_ITEM_S * size)
