"""``aqueduct serve module:attr`` (also ``python -m aqueduct serve ...``):
starts the Rust HTTP front of the service a module names, as ``uvicorn
main:app`` does for an ASGI app. Every option has an environment variable
(``AQUEDUCT_`` and its name in capitals); an option given beats its
variable, which beats the default."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import http

__all__ = ["main"]

ENV_PREFIX = "AQUEDUCT_"


@dataclass(frozen=True)
class Option:
    """One option of ``serve``: its flag, type, default and what it does."""

    name: str  # serve()'s argument, and the flag with - for _
    kind: Callable[[str], Any]
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _boolean(text: str) -> bool:
    words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    try:
        return words[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 1 or 0") from None


OPTIONS = [
    Option("host", str, "127.0.0.1", "address to listen on (0.0.0.0: every interface)"),
    Option("port", int, 8000, "port to listen on (0: one the system picks, printed at start)"),
    Option("threads", int, 2, "threads that run the connections (the flow's workers are apart)"),
    Option("timeout", float, 5.0, "seconds a request may take, from its head to its answer (504)"),
    Option("body_limit", int, http.DEFAULT_BODY_LIMIT, "largest request body, in bytes (413)"),
    Option(
        "header_timeout",
        float,
        http.DEFAULT_HEADER_TIMEOUT,
        "seconds a client has to send a request's head, from its first byte or from connecting",
    ),
    Option(
        "body_timeout",
        float,
        http.DEFAULT_BODY_TIMEOUT,
        "seconds a request's body may take to come (408, and the connection closes)",
    ),
    Option(
        "idle_timeout",
        float,
        http.DEFAULT_IDLE_TIMEOUT,
        "seconds a keep-alive connection may sit idle after an answer",
    ),
    Option(
        "write_timeout",
        float,
        http.DEFAULT_WRITE_TIMEOUT,
        "seconds writing an answer may wait for a client that reads nothing",
    ),
    Option(
        "max_connections",
        int,
        http.DEFAULT_MAX_CONNECTIONS,
        "most connections open at once (beyond: they wait in the listen backlog)",
    ),
    Option(
        "api_keys",
        http.split_api_keys,
        None,
        "comma-separated API keys a request must carry one of (Authorization: Bearer, or "
        "X-API-Key); prefer the variable: a command line is visible to every user",
    ),
    Option("open_metrics", _boolean, False, "/metrics needs no API key (1 or 0)"),
    Option(
        "access_log",
        str,
        None,
        "append a line per answered request to this file ('-': stderr)",
    ),
    Option(
        "drain_delay",
        float,
        http.DEFAULT_DRAIN_DELAY,
        "seconds, after SIGTERM, /ready answers 503 while requests are still served "
        "(0 for local use)",
    ),
    Option(
        "graceful_timeout",
        float,
        http.DEFAULT_GRACEFUL_TIMEOUT,
        "seconds requests in flight get to finish once the server stops accepting",
    ),
    Option(
        "reuse_port",
        _boolean,
        False,
        "listen with SO_REUSEPORT: a new version may listen on the same port (1 or 0)",
    ),
]

TARGET_HELP = """\
MODULE:ATTR names what to serve: ATTR (dotted names allowed) is an
aqueduct.http.Service (a Flow not yet started and its route functions), or a
function of no arguments that returns one. MODULE is imported from the
--app-dir (default: the current directory), like any module: code under its
`if __name__ == "__main__":` does not run, and the flow's workers import it
the same way."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aqueduct",
        description="Serve an aqueduct flow over HTTP with the Rust front.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve MODULE:ATTR over HTTP until SIGINT or SIGTERM",
        description="Serve MODULE:ATTR over HTTP until SIGINT or SIGTERM; then drain "
        "(/ready 503 for --drain-delay), stop accepting, let requests in flight finish "
        "and stop the flow. A second signal stops at once.",
        epilog=TARGET_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("target", metavar="MODULE:ATTR", help="what to serve (see below)")
    serve.add_argument(
        "--app-dir",
        default=os.environ.get(ENV_PREFIX + "APP_DIR", "."),
        help="directory to import MODULE from, put first on sys.path "
        f"(env {ENV_PREFIX}APP_DIR; default: .)",
    )
    for option in OPTIONS:
        default = os.environ.get(option.env, option.default)
        shown = "off" if option.default is None else option.default
        serve.add_argument(
            option.flag,
            dest=option.name,
            type=option.kind,
            default=default,
            help=f"{option.help} (env {option.env}; default: {shown})",
        )
    return parser


class TargetError(Exception):
    """MODULE:ATTR does not name a service."""


def load(target: str, app_dir: str) -> http.Service:
    """The service ``target`` names, importing its module from ``app_dir``."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise TargetError(f"{target!r} is not MODULE:ATTR")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)  # the workers start with this sys.path too
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise TargetError(f"no module {module_name!r} in {path} or on sys.path") from exc
        raise
    for name in attr.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(found) and not isinstance(found, http.Service | type):
        found = found()
    if not isinstance(found, http.Service):
        raise TargetError(
            f"{target} is a {type(found).__name__}, not an aqueduct.http.Service (a flow and "
            "its route functions) or a function returning one"
        )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        service = load(args.target, args.app_dir)
    except TargetError as exc:
        parser.exit(2, f"aqueduct serve: {exc}\n")
    options = {option.name: getattr(args, option.name) for option in OPTIONS}
    host = options["host"]

    def ready(port: int) -> None:
        print(f"aqueduct: serving {args.target} on http://{host}:{port}", flush=True)

    service.serve(on_ready=ready, **options)
    return 0
