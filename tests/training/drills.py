"""A fault-tolerance drill for Ray Train runs: a worker loop whose rank-0 worker kills its
process once, right after reporting a given epoch, as a lost node would. Test-only: the
library loop has no failure path of its own. Ray Train workers import this module by
name (the driver's sys.path reaches them), so it stays small."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from emogen.training import RayTrainSession, run_training

FAIL_AFTER_EPOCH = 2  # the epoch whose report is the last one before the process dies


def marker(run_dir: str | Path, epoch: int = FAIL_AFTER_EPOCH) -> Path:
    """The file that says the drill fired (so a restarted worker group does not fire it again)."""
    return Path(run_dir) / f".failed-at-epoch-{epoch}"


class FailOnceSession(RayTrainSession):
    """A Ray Train session whose rank-0 worker exits, once, after reporting `epoch`."""

    def __init__(self, run_dir: str, epoch: int = FAIL_AFTER_EPOCH) -> None:
        self.marker, self.epoch = marker(run_dir, epoch), epoch

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        super().report(metrics, checkpoint_dir)
        if metrics.get("epoch") == self.epoch and self.get_context().get_world_rank() == 0 and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
            os._exit(1)


def failing_worker_loop(config: dict[str, Any]) -> None:
    """train_loop_per_worker under FailOnceSession (pass it to fit as worker_loop)."""
    run_training(config["loop"], FailOnceSession(config["loop"].run_dir))
