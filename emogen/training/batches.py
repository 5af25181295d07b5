"""Where a worker's batches come from: its Ray Data shards, read once into tensors when
they fit in memory (then reshuffled every epoch), else streamed every epoch."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from emogen.data.features import decode_mels
from emogen.training.config import TrainConfig
from emogen.training.tasks import Task

Batch = tuple[torch.Tensor, torch.Tensor]  # inputs, labels


def shard_batches(shard: Any, batch_size: int, device: torch.device, shuffle: int = 0) -> Iterator[Batch]:
    """A shard's mels [B, n_mels, T] and labels, decoded on the worker."""
    kwargs = {"local_shuffle_buffer_size": shuffle} if shuffle else {}
    # numpy batches: converting each batch to pandas is a large share of Ray Train's per-batch overhead
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=False, **kwargs):
        if len(batch["label"]) == 0:
            continue
        mel = torch.from_numpy(decode_mels(batch)).to(device, non_blocking=True)
        yield mel, torch.tensor(np.asarray(batch["label"], dtype=np.int64), device=device)


def input_batches(shard: Any, task: Task, batch_size: int, device: torch.device, shuffle: int = 0) -> Iterator[Batch]:
    """A shard's batches as the model trains on them (after `Task.inputs`)."""
    for mel, label in shard_batches(shard, batch_size, device, shuffle):
        yield task.inputs(mel, label), label


class TensorData:
    """A worker's split held as tensors: inputs (after `Task.inputs`) and labels."""

    def __init__(self, x: torch.Tensor, label: torch.Tensor) -> None:
        self.x, self.label = x, label

    def __len__(self) -> int:
        return self.label.shape[0]

    def batches(self, batch_size: int, shuffle: torch.Generator | None = None) -> Iterator[Batch]:
        """Consecutive batches, in a random order drawn from `shuffle` when given (a
        seeded generator per epoch: a resumed run sees the order the lost one would have)."""
        n = len(self)
        order = torch.randperm(n, generator=shuffle).to(self.label.device) if shuffle is not None else None
        for start in range(0, n, batch_size):
            if order is None:
                yield self.x[start : start + batch_size], self.label[start : start + batch_size]
            else:
                index = order[start : start + batch_size]
                yield self.x[index], self.label[index]


def read_into_memory(shard: Any, task: Task, device: torch.device, limit_mb: float, chunk: int = 256) -> TensorData | None:
    """The shard as TensorData, or None when it is bigger than limit_mb (or limit_mb is 0):
    then the loop streams it from Ray Data every epoch."""
    if limit_mb <= 0:
        return None
    xs, labels, size = [], [], 0
    for x, label in input_batches(shard, task, chunk, device):
        size += x.element_size() * x.nelement()
        if size > limit_mb * 2**20:
            return None
        xs.append(x)
        labels.append(label)
    if not xs:
        return TensorData(torch.zeros(0, device=device), torch.zeros(0, dtype=torch.long, device=device))
    return TensorData(torch.cat(xs), torch.cat(labels))


class WorkerData:
    """A worker's training and validation splits; validation is held in memory only when
    training is (a split too big for memory means the other one may be too)."""

    def __init__(self, train_shard: Any, val_shard: Any, task: Task, device: torch.device, train: TrainConfig) -> None:
        self.train_shard, self.val_shard, self.task, self.device, self.train = train_shard, val_shard, task, device, train
        self.train_data = read_into_memory(train_shard, task, device, train.in_memory_mb)
        self.val_data = read_into_memory(val_shard, task, device, train.in_memory_mb) if self.train_data is not None else None

    def describe(self) -> str:
        return f"{len(self.train_data)} training clips held in memory" if self.train_data is not None else "training data streamed"

    def train_batches(self, epoch: int, rank: int) -> Iterator[Batch]:
        """This epoch's training batches: a seeded order per worker and epoch in memory,
        Ray Data's local shuffle when streamed."""
        if self.train_data is not None:
            order = torch.Generator().manual_seed(self.train.seed * 1_000_003 + rank * 10_007 + epoch)
            return self.train_data.batches(self.train.batch_size, order)
        return input_batches(self.train_shard, self.task, self.train.batch_size, self.device, self.train.shuffle_buffer)

    def val_batches(self) -> Iterator[Batch]:
        if self.val_data is not None:
            return self.val_data.batches(self.train.batch_size)
        return input_batches(self.val_shard, self.task, self.train.batch_size, self.device)
