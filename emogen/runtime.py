"""Connecting to Ray the same way on a laptop and on a cluster."""

from __future__ import annotations

import os
import sys
from typing import Any


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
    """Join a running cluster (address, or RAY_ADDRESS as `ray job submit` sets) or start
    a local instance with num_cpus. A no-op when Ray is already initialized (tests)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **kwargs)
    else:
        # The dashboard stays on: Ray Train's controller watches its workers through the
        # state API it serves (bound to 127.0.0.1 by default).
        ray.init(num_cpus=num_cpus, **kwargs)
    progress_bars_only_on_a_terminal()


def progress_bars_only_on_a_terminal() -> None:
    """Ray Data's progress bars redraw a line with carriage returns and escape codes: on a
    terminal that is progress, in `ray job logs` or a redirected file it is noise."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
