"""The worker loop, shared by the SER, the VAE and the diffusion U-Net.

`run_training(config, session)` trains one model: data shards, DDP, mixed precision on
GPU, LR schedule, early stopping, a checkpoint every epoch, resume, MLflow. The session
(emogen.training.session) says where shards, the device and checkpoints come from and
where reports go. `train_loop_per_worker(config)` is the plain function Ray's
TorchTrainer runs: on 1 CPU worker in a test, on 32 GPU workers on a cluster.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from emogen.checkpoint import build_configs, load_state, plain, save_state
from emogen.logs import get_logger
from emogen.training.config import TrainConfig
from emogen.training.session import RayTrainSession
from emogen.training.ema import WeightAverage
from emogen.training.tasks import MODELS, Task


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (see run_training for config)."""
    _quiet_ray_train_reports()
    run_training(config, RayTrainSession())


def _quiet_ray_train_reports() -> None:
    """Ray Train V2 logs every report (its metrics dict and checkpoint path) and every
    persisted checkpoint at INFO from each worker: two long lines per epoch that bury the
    loop's own progress lines. The report logger is named by its module's file path, so
    look the modules up (internal: skip quietly when a Ray version moves them)."""
    try:
        from ray.train.v2._internal.execution import context, storage
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    logging.getLogger(storage.__name__).setLevel(logging.WARNING)


def run_training(config: dict[str, Any], session: RayTrainSession) -> None:
    """Train (or resume) one model under a session.

    config: model ("ser" | "vae" | "diffusion"), configs (model config dicts),
    train (TrainConfig dict), audio (AudioConfig dict), extra (e.g. vae_checkpoint),
    mlflow ({"tracking_uri", "run_id"} or None), run_dir (for the failure drill), and
    optionally label (the log name, default the model name).
    """
    context = session.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    train_cfg = TrainConfig(**config["train"])
    cfgs = build_configs(config["configs"])
    extra = dict(config.get("extra") or {})
    device = session.get_device()
    torch.manual_seed(train_cfg.seed + rank)

    # Resume: a restarted worker group (fault tolerance) or a re-run with the same name.
    state = None
    checkpoint = session.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_state(ckpt_dir)
        extra.update({k: v for k, v in state["extra"].items() if k == "latent_scale"})

    task = MODELS[config["model"]].task(cfgs, train_cfg, extra)
    model = task.build()
    train_shard = session.get_dataset_shard("train")
    if state is not None:
        model.load_state_dict(state["model"])
    else:
        # each worker from its own shard; DDP then broadcasts rank 0's buffers
        task.fit_data_stats(model, train_shard)
    model = session.prepare_model(model)
    task.setup(model, device)
    ema = WeightAverage(_unwrap(model), train_cfg.ema_decay) if train_cfg.ema_decay > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    lr_scheduler = _lr_scheduler(optimizer, train_cfg)
    use_amp = train_cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best, bad_epochs, history, resumes, best_model = 0, math.inf, 0, [], [], None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if use_amp and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        start_epoch, best, bad_epochs = state["epoch"], state["best"], state["bad_epochs"]
        history, resumes, best_model = state["history"], state["resumes"] + [state["epoch"]], state["best_model"]
        if ema is not None and state.get("ema_model"):
            ema.load_state_dict(state["ema_model"])

    mlflow = _mlflow_for_rank0(config.get("mlflow"), rank)
    val_shard = session.get_dataset_shard("val")
    train_data = _read_into_memory(train_shard, task, device, train_cfg.in_memory_mb)
    val_data = _read_into_memory(val_shard, task, device, train_cfg.in_memory_mb) if train_data is not None else None
    stopped_early = state is not None and state.get("stopped_early", False)
    steps = int(history[-1].get("steps", 0)) if history else 0  # optimizer steps so far, per worker
    log = get_logger(config.get("label") or task.name)  # names the run in interleaved logs
    if rank == 0:
        log.info(f"{world} worker(s) on {device.type}, {torch.get_num_threads()} torch thread(s) each; "
                 + (f"{len(train_data)} training clips held in memory" if train_data is not None else "training data streamed"))
        if start_epoch:
            log.info(f"resuming from the checkpoint of epoch {start_epoch}")

    for epoch in range(start_epoch, train_cfg.epochs):
        if stopped_early:
            break
        if train_cfg.fail_at_epoch == epoch and rank == 0:
            marker = Path(config["run_dir"]) / f".failed-at-epoch-{epoch}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                log.info(f"failure drill: worker exits at the start of epoch {epoch}")
                os._exit(1)
        started = time.time()
        model.train()
        train_sums, seen = {"loss": 0.0}, 0
        if train_data is not None:
            order = torch.Generator().manual_seed(train_cfg.seed * 1_000_003 + rank * 10_007 + epoch)
            batches = train_data.batches(train_cfg.batch_size, order)
        else:
            batches = _input_batches(train_shard, task, train_cfg.batch_size, device, train_cfg.shuffle_buffer)
        for x, label in batches:
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss, parts = task.loss(model, x, label, epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            steps += 1
            if ema is not None:
                ema.update(_unwrap(model), steps)
            n = x.shape[0]
            train_sums["loss"] += loss.item() * n
            for k, v in parts.items():
                train_sums[k] = train_sums.get(k, 0.0) + v * n
            seen += n
        task.end_train_pass(_unwrap(model))
        if ema is not None:
            ema.copy_buffers(_unwrap(model))
        train_sums["count"] = seen
        train_sums = _all_reduce(train_sums, device)
        count = train_sums.pop("count")
        metrics = {f"train_{k}": v / max(count, 1) for k, v in train_sums.items()}

        validation_started = time.time()
        model.eval()
        val_sums: dict[str, float] = {}
        val_count = 0
        val_batches = val_data.batches(train_cfg.batch_size) if val_data is not None else _input_batches(val_shard, task, train_cfg.batch_size, device)
        for x, label in val_batches:
            for k, v in task.evaluate(model, x, label, epoch).items():
                val_sums[k] = val_sums.get(k, 0.0) + v
            val_count += x.shape[0]
        val_sums["count"] = val_count
        val_sums = _all_reduce(val_sums, device)
        val_count = int(val_sums.pop("count"))
        if val_count:  # tiny corpora may have no validation speaker: then train loss decides
            metrics.update({f"val_{k}": v for k, v in task.finalize(val_sums, val_count).items()})
        monitor = metrics.get("val_loss", metrics["train_loss"])
        if isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            lr_scheduler.step(monitor)
        else:
            lr_scheduler.step()
        if monitor < best - 1e-6:
            best, bad_epochs = monitor, 0
            best_model = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
        else:
            bad_epochs += 1
        stopped_early = 0 < train_cfg.early_stopping_patience <= bad_epochs
        metrics.update(
            epoch=epoch + 1, steps=steps, lr=optimizer.param_groups[0]["lr"], seconds=time.time() - started,
            seconds_validation=time.time() - validation_started, best_val=best, stopped_early=stopped_early,
        )
        history.append({k: float(v) for k, v in metrics.items()})

        state = {
            "model_name": task.name,
            "model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
            "best_model": best_model,
            "ema_model": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "grad_scaler": scaler.state_dict() if use_amp else None,
            "epoch": epoch + 1,
            "best": best,
            "bad_epochs": bad_epochs,
            "stopped_early": stopped_early,
            "history": history,
            "resumes": resumes,
            "configs": plain(config["configs"]),
            "train": plain(config["train"]),
            "audio": plain(config["audio"]),
            "extra": task.checkpoint_extra(),
        }
        if rank == 0:  # log before reporting: a Tune scheduler may end the trial at the report
            # ~30 progress lines per run at most: a 150-epoch diffusion run would bury the rest
            if (epoch + 1) % max(1, train_cfg.epochs // 30) == 0 or epoch + 1 in (1, train_cfg.epochs) or stopped_early:
                _log_epoch(log, metrics, train_cfg.epochs)
            if mlflow is not None:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch + 1)
        _report(session, metrics, state if rank == 0 else None)
        if stopped_early:
            if rank == 0:
                log.info(f"early stop: no improvement for {bad_epochs} epochs")
            break
    else:
        if state is not None and start_epoch >= train_cfg.epochs and history:
            # A finished run re-run by name: nothing to train, report where it stands.
            _report(session, dict(history[-1]), None)


def _lr_scheduler(optimizer: torch.optim.Optimizer, train_cfg: TrainConfig) -> Any:
    if train_cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=train_cfg.lr_factor, patience=train_cfg.lr_patience)
    if train_cfg.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    if train_cfg.lr_schedule == "cosine":
        epochs = max(train_cfg.epochs, 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs)))
    raise ValueError(f"unknown lr_schedule {train_cfg.lr_schedule!r}; expected plateau, cosine or constant")


def _batches(shard: Any, batch_size: int, device: torch.device, shuffle: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from emogen.data.features import decode_mels

    kwargs = {"local_shuffle_buffer_size": shuffle} if shuffle else {}
    # numpy batches: converting each batch to pandas is a large share of Ray Train's per-batch overhead
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=False, **kwargs):
        if len(batch["label"]) == 0:
            continue
        mel = torch.from_numpy(decode_mels(batch)).to(device, non_blocking=True)
        yield mel, torch.tensor(np.asarray(batch["label"], dtype=np.int64), device=device)


def _input_batches(shard: Any, task: Task, batch_size: int, device: torch.device, shuffle: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for mel, label in _batches(shard, batch_size, device, shuffle):
        yield task.inputs(mel, label), label


class TensorData:
    """A worker's split held as tensors: inputs (after `Task.inputs`) and labels."""

    def __init__(self, x: torch.Tensor, label: torch.Tensor) -> None:
        self.x, self.label = x, label

    def __len__(self) -> int:
        return self.label.shape[0]

    def batches(self, batch_size: int, shuffle: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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


def _read_into_memory(shard: Any, task: Task, device: torch.device, limit_mb: float, chunk: int = 256) -> TensorData | None:
    """The shard as TensorData, or None when it is bigger than limit_mb (or limit_mb is 0):
    then the loop streams it from Ray Data every epoch, as before."""
    if limit_mb <= 0:
        return None
    xs, labels, size = [], [], 0
    for x, label in _input_batches(shard, task, chunk, device):
        size += x.element_size() * x.nelement()
        if size > limit_mb * 2**20:
            return None
        xs.append(x)
        labels.append(label)
    if not xs:
        return TensorData(torch.zeros(0, device=device), torch.zeros(0, dtype=torch.long, device=device))
    return TensorData(torch.cat(xs), torch.cat(labels))


def _all_reduce(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum metric sums across workers. Keys are unioned first: a worker whose shard had
    no batch (tiny validation sets) has fewer keys and must not break the collective."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return sums
    all_keys: list[list[str]] = [[] for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather_object(all_keys, sorted(sums))
    keys = sorted(set().union(*all_keys))
    packed = torch.tensor([float(sums.get(k, 0.0)) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(packed)
    return dict(zip(keys, packed.tolist()))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _report(session: RayTrainSession, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    if state is None:
        session.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_state(tmp, state)
        session.report(metrics, checkpoint_dir=tmp)


def _log_epoch(log: logging.Logger, metrics: dict[str, Any], epochs: int) -> None:
    shown = {k: v for k, v in metrics.items() if k.startswith(("train_loss", "val_")) and not k.startswith("val_n_")}
    text = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
    log.info(f"epoch {metrics['epoch']}/{epochs} {text} lr={metrics['lr']:.2e} ({metrics['seconds']:.1f} s)")


def _mlflow_for_rank0(settings: dict[str, Any] | None, rank: int) -> Any:
    if rank != 0 or not settings:
        return None
    import mlflow

    mlflow.set_tracking_uri(settings["tracking_uri"])
    mlflow.start_run(run_id=settings["run_id"])
    return mlflow
