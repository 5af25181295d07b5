"""Connecting to Ray the same way on a laptop and on a cluster."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
    """Join a running cluster (address, or RAY_ADDRESS as `ray job submit` sets) or start
    a local instance with num_cpus. A no-op when Ray is already initialized (tests)."""
    import ray  # deferred: Ray is heavy to import, and `emogen --help` imports this module

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray Train's print patch, when stdout is wrapped (as under `ray job submit`), prints a
    # worker's line AND logs it again: every line twice in the job log. The trainer passes
    # this setting from the driver to its workers.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # A worker's report waits in a queue of one until the controller polls it, so a poll
    # interval longer than an epoch stretches every short epoch to it; a frequent poll
    # costs nothing, a slow one is only a missed health check.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **kwargs)
    else:
        # The dashboard stays on: Ray Train's controller watches its workers through the
        # state API it serves (bound to 127.0.0.1 by default).
        ray.init(num_cpus=num_cpus, **kwargs)
    stop_on_sigterm()  # ray.init installed its own handler (a bare sys.exit)
    plain_output_off_a_terminal()


_stop_requested = False


def stop_on_sigterm() -> None:
    """SIGTERM (what `ray job stop` and container runtimes send) stops a command as Ctrl-C
    does, and is remembered (`stop_requested`): the CLI then ends its MLflow runs as
    KILLED instead of leaving them RUNNING. Ray's code on the way out may turn the
    interrupt into another exception; the flag still tells what happened."""

    def interrupt(signum, frame):
        global _stop_requested
        _stop_requested = True
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def stop_requested() -> bool:
    """True once this process got SIGTERM (after `stop_on_sigterm`)."""
    return _stop_requested


def plain_output_off_a_terminal() -> None:
    """Progress bars and colors only when stderr is a terminal. Ray Data's bars are redrawn
    with carriage returns and cursor moves (the driver hides and redraws them around every
    worker line it forwards): in `ray job logs` or a redirected file these are escape codes
    in the text. Without a terminal, forwarded worker lines also lose their color codes."""
    from ray.data import DataContext  # deferred: Ray is heavy to import, and `emogen --help` imports this module

    on_a_terminal = sys.stderr.isatty()
    DataContext.get_current().enable_progress_bars = on_a_terminal
    if not on_a_terminal:
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # read by the driver as it prints each line
