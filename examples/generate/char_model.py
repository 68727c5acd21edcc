"""A small generative model that needs no download: a character-level
n-gram language model trained, when a worker starts, on text the standard
library ships (the Zen of Python and the docstrings of some modules).

It decodes token by token, one character per sequence per iteration, over
every active sequence at once — the shape of a real decoder's loop — so it
runs in a ``continuous=True`` step: a sequence joins the batch while others
are halfway through, and leaves it the moment it is done.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import random
from collections import defaultdict

from aqueduct import BaseTask, BaseTaskHandler

#: Longest context the model looks at, in characters.
ORDER = 5
#: Modules whose docstrings it learns from.
MODULES = (
    "argparse", "asyncio", "collections", "contextlib", "dataclasses", "email", "functools",
    "http.client", "inspect", "itertools", "json", "logging", "pathlib", "pickle", "random",
    "shutil", "socket", "subprocess", "textwrap", "threading", "typing", "unittest", "zipfile",
)  # fmt: skip


class Generation(BaseTask):
    """A prompt and how much to write; the handler sets ``text`` (the prompt
    and what it wrote) and streams each character as a part."""

    def __init__(self, prompt: str, max_tokens: int = 200, seed: int | None = None) -> None:
        super().__init__()
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.seed = seed
        self.text = prompt
        self.written = 0


def corpus() -> str:
    """The training text: the Zen of Python and the modules' docstrings."""
    with contextlib.redirect_stdout(io.StringIO()):
        this = importlib.import_module("this")  # it prints the Zen on import
    texts = ["".join(this.d.get(c, c) for c in this.s)]
    for name in MODULES:
        module = importlib.import_module(name)
        texts.append(inspect.getdoc(module) or "")
        for value in vars(module).values():
            if inspect.isclass(value) or inspect.isfunction(value):
                texts.append(inspect.getdoc(value) or "")
    return "\n\n".join(t for t in texts if t)


class CharModel(BaseTaskHandler):
    """The n-gram model: for every context of 1..ORDER characters, what
    follows it and how often. Sampling backs off to shorter contexts."""

    def __init__(self) -> None:
        self.table: dict[str, tuple[str, list[int]]] = {}

    def on_start(self) -> None:
        text = corpus()
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for i in range(1, len(text)):
            for k in range(1, ORDER + 1):
                if i - k < 0:
                    break
                counts[text[i - k : i]][text[i]] += 1
        for context, nexts in counts.items():
            chars = "".join(nexts)
            total, cumulative = 0, []
            for c in chars:
                total += nexts[c]
                cumulative.append(total)
            self.table[context] = (chars, cumulative)

    def next_char(self, text: str, rng: random.Random) -> str:
        for k in range(min(ORDER, len(text)), 0, -1):
            found = self.table.get(text[-k:])
            if found is not None:
                chars, cumulative = found
                return rng.choices(chars, cum_weights=cumulative)[0]
        return " "

    def handle(self, *active: Generation) -> None:  # type: ignore[override]
        """One decoding iteration: a character for every active sequence."""
        for task in active:
            rng = random.Random(f"{task.seed}:{task.written}") if task.seed is not None else random
            char = self.next_char(task.text, rng)  # type: ignore[arg-type]
            task.text += char
            task.written += 1
            wanted = task.emit(char)
            if not wanted or task.written >= task.max_tokens:
                task.finish()
