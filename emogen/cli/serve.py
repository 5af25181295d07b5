"""`emogen serve`: the synthesis application on a local (or given) Ray, until Ctrl-C.

Its options are the fields of `ServeArgs` (what the application takes, one option per
field, named after it) and of `ServeCommand` (where this process listens and which Ray it
uses). Light to import (the CLI builds its parser from it); Ray Serve and the application
are imported when the command runs.
"""

from __future__ import annotations

import argparse
import signal
import time
from dataclasses import dataclass
from typing import Any

from emogen.inference.schema import DEFAULT_KEEP_ALIVE_TIMEOUT_S
from emogen.logs import get_logger
from emogen.options import add_config_options, add_model_options, config_values, option
from emogen.runtime import stop_on_sigterm
from emogen.serving.binding import bind_refusal
from emogen.serving.settings import ServeArgs

log = get_logger("serve")

# The command needs a checkpoint (a deployed app without one answers 503), and the flags
# these options had before they were named after ServeArgs' fields keep working.
REQUIRED = ("checkpoint",)
OLD_SPELLINGS = {
    "batch_wait_timeout_s": ("--batch-wait-timeout",),
    "num_replicas": ("--replicas",),
    "body_timeout_s": ("--body-timeout",),
    "request_timeout_s": ("--request-timeout",),
}


@dataclass
class ServeCommand:
    """What `emogen serve` needs besides the application's arguments."""

    host: str = option("127.0.0.1", "address to listen on (not loopback: only with an API key)")
    port: int = option(8000, "port to listen on")
    keep_alive_timeout: int = option(DEFAULT_KEEP_ALIVE_TIMEOUT_S, "seconds an idle connection stays open")
    address: str | None = option(None, "Ray address (default: start a local Ray)")


def check_bind(host: str, api_key: str | None) -> None:
    """Exit with `bind_refusal`'s reason, if any."""
    refusal = bind_refusal(host, api_key)
    if refusal:
        raise SystemExit(refusal)


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register `emogen serve` on an argparse subparsers object; the handler is set as
    `func` (call `args.func(args)`), blocks until Ctrl-C and returns a summary dict."""
    p = subparsers.add_parser("serve", help="serve a generator checkpoint over HTTP with Ray Serve")
    add_model_options(p, ServeArgs, required=REQUIRED, aliases=OLD_SPELLINGS)
    add_config_options(p, ServeCommand)
    p.set_defaults(func=cmd_serve)
    return p


def serve_args(args: argparse.Namespace) -> ServeArgs:
    """The application's arguments from the parsed options (the API key, when not given,
    from the environment: ServeArgs reads it)."""
    return ServeArgs(**{name: getattr(args, name) for name in ServeArgs.model_fields})


def cmd_serve(args: argparse.Namespace) -> dict:
    # deferred: Ray, Ray Serve and the application (torch, FastAPI) take seconds to import; --help must stay instant
    import ray
    from ray import serve
    from emogen.serving.app import app

    command = ServeCommand(**config_values(ServeCommand, args))
    settings = serve_args(args)
    check_bind(command.host, settings.api_key)
    if not ray.is_initialized():
        ray.init(address=command.address, log_to_driver=True)
    serve.start(http_options={"host": command.host, "port": command.port,
                              "keep_alive_timeout_s": command.keep_alive_timeout})
    application = app(settings)

    stop_on_sigterm()  # ray.init replaced it: SIGTERM (ray job stop, containers) stops cleanly like Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.time()
    log.info(f"http://{command.host}:{command.port}/ (API docs at /docs); Ctrl-C to stop")
    try:
        serve.run(application, name="emogen", route_prefix="/")
        while True:  # block until Ctrl-C / SIGTERM
            time.sleep(1)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a repeated Ctrl-C must not abort the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return {"served": settings.checkpoint, "host": command.host, "port": command.port,
            "seconds": round(time.time() - started, 1)}
