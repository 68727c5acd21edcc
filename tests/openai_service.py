"""A generative flow served over the OpenAI-compatible routes, for
test_openai.py: run as a script, it prints the port it listens on, then
serves until SIGTERM. The model writes the prompt's words back, one token
per word, over and over until ``max_tokens`` (``"endless": true``) or
after two rounds; ``boom`` as the prompt raises before the first token,
``late boom`` after it. Each cancelled task is noted in the file NOTES
names (when set)."""

from __future__ import annotations

import os
import sys
import time

from aqueduct import BaseTaskHandler, Flow, FlowStep
from aqueduct.http import serve
from aqueduct.openai import Completion, OpenAI


class Parrot(BaseTaskHandler):
    def __init__(self, delay: float, notes: str | None) -> None:
        self.delay = delay
        self.notes = notes

    def handle(self, *tasks: Completion) -> None:
        for task in tasks:
            if task.prompt == "boom":
                raise ValueError("boom before a token")
            words = task.prompt.split() or ["..."]
            rounds = task.max_tokens if task.fields.get("endless") else 2 * len(words)
            for i in range(min(rounds, task.max_tokens)):
                time.sleep(self.delay)
                if not task.emit(words[i % len(words)] + " "):
                    self.note(f"cancelled {task.prompt}")
                    break
                if task.prompt == "late boom":
                    raise ValueError("boom after a token")

    def note(self, line: str) -> None:
        if self.notes:
            with open(self.notes, "a") as out:
                out.write(line + "\n")


def main() -> None:
    delay = float(os.environ.get("TOKEN_DELAY", "0"))
    flow = Flow(
        FlowStep(Parrot(delay, os.environ.get("NOTES")), batch_size=1),
        queue_size=int(os.environ["QUEUE_SIZE"]) if "QUEUE_SIZE" in os.environ else None,
        queue_full="reject",
    )
    api = OpenAI("parrot", ping=float(os.environ.get("PING", "15")))
    serve(
        flow,
        routes=api.routes(),
        port=0,
        timeout=float(os.environ.get("TIMEOUT", "20")),
        api_keys=[os.environ["API_KEY"]] if "API_KEY" in os.environ else None,
        drain_delay=0,
        on_ready=lambda port: print("port", port, flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())
