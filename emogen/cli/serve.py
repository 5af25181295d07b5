"""`emogen serve`: the synthesis application on a local (or given) Ray, until Ctrl-C.

Light to import (the CLI builds its parser from it); Ray Serve and the application are
imported when the command runs.
"""

from __future__ import annotations

import argparse

from emogen.logs import get_logger
from emogen.tracking.registry import MODEL_URIS, TRACKING_URI_HELP
from emogen.serving.binding import bind_refusal
from emogen.inference.schema import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    DEFAULT_LONG_REQUEST_COST,
    DEFAULT_MAX_REQUESTS_PER_CLIENT,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_STEP_BUDGET,
)

log = get_logger("serve")


def check_bind(host: str, api_key: str | None) -> None:
    """Exit with `bind_refusal`'s reason, if any."""
    refusal = bind_refusal(host, api_key)
    if refusal:
        raise SystemExit(refusal)


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register `emogen serve` on an argparse subparsers object; the handler is set as
    `func` (call `args.func(args)`), blocks until Ctrl-C and returns a summary dict."""
    p = subparsers.add_parser("serve", help="serve a generator checkpoint over HTTP with Ray Serve")
    p.add_argument("--checkpoint", required=True, help=f"diffusion or VAE checkpoint directory, or {MODEL_URIS}")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)
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
    p.add_argument("--long-request-cost", type=int, default=DEFAULT_LONG_REQUEST_COST,
                   help="requests above this many steps x samples let shorter ones run between their steps")
    p.add_argument("--max-requests-per-client", type=int, default=DEFAULT_MAX_REQUESTS_PER_CLIENT,
                   help="a client's requests at once per replica (429 above; 0: no cap)")
    p.add_argument("--keep-alive-timeout", type=int, default=DEFAULT_KEEP_ALIVE_TIMEOUT_S,
                   help="seconds an idle connection stays open")
    p.add_argument("--address", default=None, help="Ray address (default: start a local Ray)")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> dict:
    import os
    import signal
    import time

    import ray
    from ray import serve

    from emogen.runtime import stop_on_sigterm
    from emogen.serving.app import ServeArgs, app

    api_key = args.api_key or os.environ.get("EMOGEN_API_KEY")
    check_bind(args.host, api_key)
    if not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=True)
    serve.start(http_options={"host": args.host, "port": args.port, "keep_alive_timeout_s": args.keep_alive_timeout})
    application = app(ServeArgs(
        checkpoint=args.checkpoint, max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout,
        num_replicas=args.replicas, step_budget=args.step_budget, api_key=api_key, body_timeout_s=args.body_timeout,
        request_timeout_s=args.request_timeout, long_request_cost=args.long_request_cost,
        max_requests_per_client=args.max_requests_per_client, tracking_uri=args.tracking_uri,
    ))

    stop_on_sigterm()  # ray.init replaced it: SIGTERM (ray job stop, containers) stops cleanly like Ctrl-C
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
