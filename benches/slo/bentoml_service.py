"""``make bench-slo``: the model emulator on BentoML, its adaptive batching
(``batchable=True``, batches of 32, ``max_latency_ms`` = the objective;
BentoML answers 503 for what it cannot do in time). One worker.

    cd benches/slo && .venv-bentoml/bin/bentoml serve bentoml_service:Model --port 8000
"""

from __future__ import annotations

import bentoml
import numpy as np
from emulator import MAX_BATCH, OBJECTIVE_S, run_batch


@bentoml.service(workers=1, traffic={"timeout": 30})
class Model:
    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=int(OBJECTIVE_S * 1000))
    def predict(self, x: np.ndarray) -> np.ndarray:
        run_batch(len(x))
        return x
