"""The aqueduct logger: records from the main process *and* from workers.

Workers forward their records to the parent, where they are handled by
``log`` and its handlers (add a Sentry or any other handler here).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LOGGER_NAME", "log", "replace_logger"]

LOGGER_NAME = "aqueduct"

log = logging.getLogger(LOGGER_NAME)
log.setLevel(logging.DEBUG)
_formatter = logging.Formatter("[%(asctime)s] %(levelname)s [Flow] [pid:%(process)d] %(message)s")
_stderr_handler = logging.StreamHandler(sys.stderr)
_stderr_handler.setFormatter(_formatter)
log.addHandler(_stderr_handler)


def replace_logger(logger: logging.Logger) -> None:
    """Makes ``log`` behave as ``logger``: its name, level, handlers and parent."""
    log.name = logger.name
    log.level = logger.level
    log.parent = logger.parent
    log.propagate = logger.propagate
    log.handlers = logger.handlers
    log.disabled = logger.disabled
