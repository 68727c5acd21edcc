"""The streaming benchmark's service on LitServe's ``OpenAISpec`` (its
batched streaming: up to 32 requests per batch, 5 ms to fill it; a batch
streams until its longest sequence is done), the same decode emulator.

    python benches/http/stream_litserve.py --port 8000
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import litserve as ls
from decode_emulator import MOSEC_BATCH, iteration


class Emulator(ls.LitAPI):
    def setup(self, device: Any) -> None:
        pass

    def predict(self, requests: list[Any], context: list[dict[str, Any]]) -> Iterator[list[str]]:
        lengths = [int(c.get("max_tokens") or 16) for c in context]
        written = [0] * len(lengths)
        while any(w < n for w, n in zip(written, lengths, strict=True)):
            iteration(sum(w < n for w, n in zip(written, lengths, strict=True)))
            out = []
            for i, n in enumerate(lengths):
                if written[i] < n:
                    written[i] += 1
                    out.append(str(written[i]))
                else:
                    out.append("")
            yield out

    def unbatch(self, output: Iterator[list[str]]) -> Iterator[list[str]]:
        yield from output  # an iteration's tokens, one per request

    def encode_response(
        self, outputs: Iterator[list[str]], context: list[dict[str, Any]]
    ) -> Iterator[list[dict[str, str]]]:
        for tokens in outputs:
            yield [{"role": "assistant", "content": token} for token in tokens]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    api = Emulator(
        max_batch_size=MOSEC_BATCH, batch_timeout=0.005, stream=True, spec=ls.OpenAISpec()
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
