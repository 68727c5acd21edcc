"""The streaming benchmark's service on mosec (run in its own venv): its
``SSEWorker`` with dynamic batching; a batch decodes until its longest
member is done, every row computed each iteration (a padded batch).

    .venv-mosec/bin/python benches/http/stream_mosec.py --port 8000
"""

from __future__ import annotations

import json

from decode_emulator import MOSEC_BATCH, iteration
from mosec import Server, SSEWorker


class Decoder(SSEWorker):
    def forward(self, data: list[dict]) -> list[str]:  # type: ignore[override]
        lengths = [int(d["length"]) for d in data]
        written = [0] * len(data)
        live = list(range(len(data)))
        while live:
            iteration(len(data))
            for i in live:
                written[i] += 1
                self.send_stream_event(str(written[i]), index=i)
            live = [i for i in live if written[i] < lengths[i]]
        return [json.dumps({"tokens": n}) for n in written]


if __name__ == "__main__":
    server = Server()
    server.append_worker(Decoder, max_batch_size=MOSEC_BATCH, max_wait_time=5)
    server.run()
