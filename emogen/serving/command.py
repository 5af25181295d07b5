"""`emogen serve`: the synthesis application on a local (or given) Ray, until Ctrl-C.

Light to import (the CLI builds its parser from it); Ray Serve and the application are
imported when the command runs.
"""

from __future__ import annotations

import argparse
import ipaddress

from emogen.logs import get_logger
from emogen.serving.schema import DEFAULT_BODY_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S, DEFAULT_STEP_BUDGET

log = get_logger("serve")


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Without an API key the service only binds to loopback."""
    if not api_key and not is_loopback(host):
        raise SystemExit(
            f"refusing to bind the synthesis service to {host!r} without an API key: "
            "set --api-key (or EMOGEN_API_KEY) or bind to 127.0.0.1")


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register `emogen serve` on an argparse subparsers object; the handler is set as
    `func` (call `args.func(args)`), blocks until Ctrl-C and returns a summary dict."""
    p = subparsers.add_parser("serve", help="serve a generator checkpoint over HTTP with Ray Serve")
    p.add_argument("--checkpoint", required=True, help="diffusion or VAE checkpoint directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--batch-wait-timeout", type=float, default=0.05, help="seconds")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--step-budget", type=int, default=DEFAULT_STEP_BUDGET, help="max steps x num_samples per request")
    p.add_argument("--api-key", default=None, help="require X-API-Key (default: $EMOGEN_API_KEY)")
    p.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                   help="seconds a request's whole body may take to arrive (408 after)")
    p.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                   help="seconds a synthesis may take unless it asks for less (timeout_s); 504 and cancelled after")
    p.add_argument("--address", default=None, help="Ray address (default: start a local Ray)")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> dict:
    import os
    import signal
    import time

    import ray
    from ray import serve

    from emogen.serving.app import ServeArgs, app

    api_key = args.api_key or os.environ.get("EMOGEN_API_KEY")
    check_bind(args.host, api_key)
    if not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=True)
    serve.start(http_options={"host": args.host, "port": args.port})
    application = app(ServeArgs(
        checkpoint=args.checkpoint, max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout,
        num_replicas=args.replicas, step_budget=args.step_budget, api_key=api_key, body_timeout_s=args.body_timeout,
        request_timeout_s=args.request_timeout,
    ))

    def _stop(signum, frame):  # SIGTERM (ray job stop, containers) stops cleanly like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.time()
    log.info(f"http://{args.host}:{args.port}/ (API docs at /docs); Ctrl-C to stop")
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
    return {"served": args.checkpoint, "host": args.host, "port": args.port, "seconds": round(time.time() - started, 1)}
