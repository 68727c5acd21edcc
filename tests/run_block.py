"""Runs a documentation block as a script — ``__main__``, top-level
``await`` allowed (the block is awaited on a fresh event loop) — for
test_docs.py: ``python run_block.py block.py``."""

from __future__ import annotations

import ast
import asyncio
import sys
import types

path = sys.argv[1]
with open(path) as f:
    code = compile(f.read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
module = types.ModuleType("__main__")
module.__file__ = path
sys.modules["__main__"] = module
result = eval(code, module.__dict__)
if asyncio.iscoroutine(result):
    asyncio.run(result)
