"""Connecting to Ray the same way on a laptop and on a cluster."""

from __future__ import annotations

import os
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
