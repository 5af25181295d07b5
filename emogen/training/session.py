"""Sessions: what the worker loop needs from whoever runs it.

The loop (emogen.training.loop.run_training) is handed one: `RayTrainSession` inside a
Ray Train worker, `DirectorySession` for a training run as a plain Ray task
(`train_in_process`), and emogen.training.trial's Tune-trial session for a single-worker
trial (Ray Train's functions refuse to run inside a Tune trial). Reports carry a
checkpoint *directory*; the session wraps it in its own Checkpoint class.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emogen import storage
from emogen.checkpoint import STATE_FILE
from emogen.models.device import choose_device
from emogen.storage import atomic_write


class RayTrainSession:
    """The loop as a Ray Train worker: rank, shards, device, DDP and reports from Ray Train."""

    def get_context(self) -> Any:
        import ray.train  # deferred: Ray Train is heavy to import, and `emogen --help` imports this module

        return ray.train.get_context()  # get_world_rank(), get_world_size()

    def get_checkpoint(self) -> Any:
        import ray.train  # deferred: Ray Train is heavy to import, and `emogen --help` imports this module

        return ray.train.get_checkpoint()

    def get_dataset_shard(self, name: str) -> Any:
        import ray.train  # deferred: Ray Train is heavy to import, and `emogen --help` imports this module

        return ray.train.get_dataset_shard(name)

    def get_device(self) -> torch.device:
        import ray.train.torch  # deferred: Ray Train is heavy to import, and `emogen --help` imports this module

        return ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch  # deferred: Ray Train is heavy to import, and `emogen --help` imports this module

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        import ray.train  # deferred: Ray Train is heavy to import, and `emogen --help` imports this module

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


class _SingleProcessContext:
    def get_world_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 1


class SingleProcessSession(RayTrainSession):
    """The loop in the current process (a Ray task, a Tune trial): one worker, no DDP,
    the given (materialized) datasets as shards. Subclasses decide where reports go.

    use_gpu: train on the GPU Ray granted this process (emogen.models.device), an error
    when it has none it can use; else on the CPU."""

    def __init__(self, datasets: dict[str, Any], use_gpu: bool = False):
        self.datasets = datasets
        self.device = choose_device("cuda" if use_gpu else "cpu")

    def get_context(self) -> Any:
        return _SingleProcessContext()

    def get_dataset_shard(self, name: str) -> Any:
        return self.datasets[name]

    def get_device(self) -> torch.device:
        return self.device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)


class DirectorySession(SingleProcessSession):
    """Checkpoints to <run_dir>/state.pt every epoch and resumes from it: a retried Ray task
    continues where the lost one stopped. run_dir is a local folder (the file written
    beside its target and renamed over it) or a location on object storage, which a task
    retried on another node reads as well (the file uploaded as one object, visible only
    whole; a resume fetches it into this node's cache)."""

    def __init__(self, datasets: dict[str, Any], run_dir: str | Path, use_gpu: bool = False):
        super().__init__(datasets, use_gpu)
        self.run_dir = storage.absolute(run_dir)
        self.state_location = storage.join(self.run_dir, STATE_FILE)

    def get_checkpoint(self) -> Any:
        import ray.train  # deferred: Ray Train is heavy to import, and `emogen --help` imports this module

        if not storage.is_file(self.state_location):
            return None
        # fetch: a local state file is read where it is, a remote one from this node's cache
        return ray.train.Checkpoint.from_directory(str(storage.fetch(self.state_location).parent))

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        if not checkpoint_dir:
            return
        source = Path(checkpoint_dir) / STATE_FILE
        if storage.is_uri(self.run_dir):
            storage.upload(source, self.state_location)
        else:
            atomic_write(self.state_location, lambda tmp: shutil.copyfile(source, tmp))
