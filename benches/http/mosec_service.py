"""The same two services on mosec (run in its own venv).

.venv-mosec/bin/python benches/http/mosec_service.py --service noop --port 8001
"""

from __future__ import annotations

import sys
import time

from mosec import Server, Worker


class Noop(Worker):
    def forward(self, data):
        return data


class ModelEmulator(Worker):
    def forward(self, data):
        time.sleep(0.002 + 0.0002 * len(data))
        return data


if __name__ == "__main__":
    service = sys.argv[sys.argv.index("--service") + 1]
    del sys.argv[sys.argv.index("--service") : sys.argv.index("--service") + 2]
    server = Server()
    if service == "noop":
        server.append_worker(Noop)
    else:
        server.append_worker(ModelEmulator, max_batch_size=32, max_wait_time=5)
    server.run()
