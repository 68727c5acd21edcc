"""The streaming benchmark's model, shared by its services: the decode
emulator of ``benches/generative.py`` — one iteration over b sequences costs
ITERATION_S + PER_SEQUENCE_S·b of CPU. A request is ``{"length": L}``; its
stream is L events, one token each."""

from __future__ import annotations

import time

ITERATION_S = 0.002
PER_SEQUENCE_S = 0.0001
#: aqueduct's continuous set: every one of 64 clients decodes at once.
BATCH = 64
#: mosec's dynamic batches (a batch streams until its longest is done).
MOSEC_BATCH = 32


def iteration(sequences: int) -> None:
    """One decoding iteration over ``sequences`` rows (a busy wait)."""
    until = time.perf_counter() + ITERATION_S + PER_SEQUENCE_S * sequences
    while time.perf_counter() < until:
        pass
