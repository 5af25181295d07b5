"""The worker loop, shared by the SER, the VAE and the diffusion U-Net.

`run_training(loop, session)` trains one model: set up (or resume) the worker, then per
epoch `train_epoch`, `validate`, the LR schedule and early stopping, and a report with a
checkpoint. The session (emogen.training.session) says where shards, the device and
checkpoints come from and where reports go. `train_loop_per_worker(config)` is the plain
function Ray's TorchTrainer runs: on 1 CPU worker in a test, on 32 GPU workers on a cluster.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from emogen.checkpoint import build_configs, plain
from emogen.logs import get_logger
from emogen.training.batches import Batch, WorkerData
from emogen.training.config import LoopConfig, MlflowTarget, TrainConfig
from emogen.training.ema import WeightAverage
from emogen.training.session import RayTrainSession
from emogen.training.state import TrainState, Weights
from emogen.training.tasks import MODELS, Task


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function; config is {"loop": LoopConfig} (Ray Train's
    train_loop_config is a dict)."""
    _quiet_ray_train_reports()
    run_training(config["loop"], RayTrainSession())


def run_training(loop: LoopConfig, session: RayTrainSession) -> Worker:
    """Train (or resume) one model under a session; returns the worker as training left it
    (a test or a benchmark looks at its model and task)."""
    worker = Worker.start(loop, session)
    progress, epochs = worker.progress, loop.train.epochs
    if progress.epoch >= epochs:
        if worker.resumed and progress.history:  # a finished run re-run by name: report where it stands
            session.report(dict(progress.history[-1]))
        return worker
    if progress.stopped_early:
        return worker
    for epoch in range(progress.epoch, epochs):
        started = time.time()
        metrics = train_epoch(worker.learner, worker.data.train_batches(epoch, worker.rank), epoch)
        validation_started = time.time()
        metrics.update(validate(worker.learner.task, worker.learner.model, worker.data.val_batches(), epoch, worker.device))
        monitor = metrics.get("val_loss", metrics["train_loss"])
        worker.learner.step_schedule(monitor)
        progress.end_epoch(monitor, worker.learner.unwrapped(), loop.train.early_stopping_patience)
        metrics.update(
            epoch=epoch + 1, steps=worker.learner.steps, lr=worker.learner.lr(), seconds=time.time() - started,
            seconds_validation=time.time() - validation_started, best_val=progress.best,
            stopped_early=progress.stopped_early,
        )
        progress.history.append({k: float(v) for k, v in metrics.items()})
        worker.report(metrics)
        if progress.stopped_early:
            if worker.rank == 0:
                worker.log.info(f"early stop: no improvement for {progress.bad_epochs} epochs")
            break
    return worker


def train_epoch(learner: Learner, batches: Iterable[Batch], epoch: int) -> dict[str, float]:
    """One pass over a worker's training batches; the loss and its parts, averaged over
    every worker's clips (train_loss, train_<part>)."""
    learner.model.train()
    sums, seen = {"loss": 0.0}, 0
    for x, label in batches:
        loss, parts = learner.step(x, label, epoch)
        n = x.shape[0]
        sums["loss"] += loss * n
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * n
        seen += n
    learner.end_train_pass()
    sums["count"] = seen
    sums = all_reduce(sums, learner.device)
    count = sums.pop("count")
    return {f"train_{k}": v / max(count, 1) for k, v in sums.items()}


def validate(task: Task, model: nn.Module, batches: Iterable[Batch], epoch: int, device: torch.device) -> dict[str, float]:
    """The task's validation metrics over every worker's batches (val_loss, ...); none
    when no worker had a validation clip (tiny corpora: the training loss decides)."""
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    for x, label in batches:
        for k, v in task.evaluate(model, x, label, epoch).items():
            sums[k] = sums.get(k, 0.0) + v
        count += x.shape[0]
    sums["count"] = count
    sums = all_reduce(sums, device)
    count = int(sums.pop("count"))
    if not count:
        return {}
    return {f"val_{k}": v for k, v in task.finalize(sums, count).items()}


# ------------------------------------------------------------ what the loop holds


@dataclass
class Learner:
    """What an optimizer step updates: the (DDP-wrapped) model, its optimizer and LR
    schedule, the mixed-precision grad scaler and the weight average."""

    task: Task
    model: nn.Module
    train: TrainConfig
    device: torch.device
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    scaler: torch.amp.GradScaler
    use_amp: bool
    ema: WeightAverage | None
    steps: int = 0  # optimizer steps so far, per worker

    @classmethod
    def build(cls, task: Task, model: nn.Module, train: TrainConfig, device: torch.device) -> Learner:
        ema = WeightAverage(unwrap(model), train.ema_decay) if train.ema_decay > 0 else None
        optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        use_amp = train.amp and device.type == "cuda"  # mixed precision only ever on CUDA
        return cls(task, model, train, device, optimizer, lr_schedule(optimizer, train),
                   torch.amp.GradScaler("cuda", enabled=use_amp), use_amp, ema)

    def restore(self, state: TrainState) -> None:
        """The optimizer, schedule, scaler and average of a resumed run."""
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_scheduler.load_state_dict(state.lr_scheduler)
        if self.use_amp and state.grad_scaler:
            self.scaler.load_state_dict(state.grad_scaler)
        if self.ema is not None and state.ema_model:
            self.ema.load_state_dict(state.ema_model)
        self.steps = int(state.history[-1].get("steps", 0)) if state.history else 0

    def unwrapped(self) -> nn.Module:
        return unwrap(self.model)

    def step(self, x: torch.Tensor, label: torch.Tensor, epoch: int) -> tuple[float, dict[str, float]]:
        """One optimizer step on a batch (clipped, scaled under AMP); its loss and parts."""
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            loss, parts = self.task.loss(self.model, x, label, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.steps += 1
        if self.ema is not None:
            self.ema.update(self.unwrapped(), self.steps)
        return loss.item(), parts

    def end_train_pass(self) -> None:
        self.task.end_train_pass(self.unwrapped())
        if self.ema is not None:
            self.ema.copy_buffers(self.unwrapped())  # the task may have changed them (the VAE's latent statistics)

    def step_schedule(self, monitor: float) -> None:
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.lr_scheduler.step(monitor)
        else:
            self.lr_scheduler.step()

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


@dataclass
class Progress:
    """Where a run stands between epochs: the best monitored loss and its weights, the
    early-stopping count, the per-epoch metrics, the epochs it resumed from."""

    epoch: int = 0  # epochs completed
    best: float = math.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)
    best_model: Weights | None = None

    @classmethod
    def resumed(cls, state: TrainState) -> Progress:
        return cls(state.epoch, state.best, state.bad_epochs, state.stopped_early, state.history,
                   state.resumes + [state.epoch], state.best_model)

    def end_epoch(self, monitor: float, model: nn.Module, patience: int) -> None:
        """Count the epoch: keep the weights when the monitored loss improved, else count
        towards early stopping (patience 0: never)."""
        self.epoch += 1
        if monitor < self.best - 1e-6:
            self.best, self.bad_epochs = monitor, 0
            self.best_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        self.stopped_early = 0 < patience <= self.bad_epochs


@dataclass
class Worker:
    """One worker's training: its rank, the learner, the progress, the data, where
    reports and logs go."""

    loop: LoopConfig
    session: RayTrainSession
    rank: int
    world: int
    device: torch.device
    learner: Learner
    progress: Progress
    data: WorkerData
    resumed: bool
    log: logging.Logger
    mlflow: Any = None  # the mlflow module on rank 0 with the run started, else None

    @classmethod
    def start(cls, loop: LoopConfig, session: RayTrainSession) -> Worker:
        """Build the model and its optimizer, or resume them from the session's checkpoint
        (a restarted worker group, or a re-run with the same name)."""
        context = session.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        device = session.get_device()
        torch.manual_seed(loop.train.seed + rank)
        state = _resume_state(session)
        extra = loop.task_extra()
        if state is not None:
            extra.update({k: v for k, v in state.extra.items() if k == "latent_scale"})
        task = MODELS[loop.model].task(build_configs(loop.configs), loop.train, extra)
        model = task.build()
        train_shard = session.get_dataset_shard("train")
        if state is not None:
            model.load_state_dict(state.model)
        else:
            # each worker from its own shard; DDP then broadcasts rank 0's buffers
            task.fit_data_stats(model, train_shard)
        model = session.prepare_model(model)
        task.setup(model, device)
        task.fit_input_stats(train_shard, device)  # on every worker, resumed or not: it may all-reduce
        learner = Learner.build(task, model, loop.train, device)
        progress = Progress()
        if state is not None:
            learner.restore(state)
            progress = Progress.resumed(state)
        mlflow = _mlflow_for_rank0(loop.mlflow, rank)
        data = WorkerData(train_shard, session.get_dataset_shard("val"), task, device, loop.train)
        worker = cls(loop, session, rank, world, device, learner, progress, data, state is not None,
                     get_logger(loop.label or task.name), mlflow)  # the label names the run in interleaved logs
        if rank == 0:
            worker.log.info(f"{world} worker(s) on {device.type}, {torch.get_num_threads()} torch thread(s) each; "
                            + data.describe())
            if progress.epoch:
                worker.log.info(f"resuming from the checkpoint of epoch {progress.epoch}")
        return worker

    def snapshot(self) -> TrainState:
        """The checkpoint of the epoch just done."""
        learner, progress, model = self.learner, self.progress, self.learner.unwrapped()
        return TrainState(
            model_name=learner.task.name,
            model={k: v.detach().cpu() for k, v in model.state_dict().items()},
            best_model=progress.best_model,
            ema_model=learner.ema.state_dict() if learner.ema is not None else None,
            optimizer=learner.optimizer.state_dict(),
            lr_scheduler=learner.lr_scheduler.state_dict(),
            grad_scaler=learner.scaler.state_dict() if learner.use_amp else None,
            epoch=progress.epoch, best=progress.best, bad_epochs=progress.bad_epochs,
            stopped_early=progress.stopped_early, history=progress.history, resumes=progress.resumes,
            configs=plain(self.loop.configs), train=plain(asdict(self.loop.train)), audio=plain(asdict(self.loop.audio)),
            extra=learner.task.checkpoint_extra(),
        )

    def report(self, metrics: dict[str, Any]) -> None:
        """Log the epoch (rank 0: progress lines, MLflow), then report it with rank 0's checkpoint."""
        if self.rank != 0:
            self.session.report(metrics)
            return
        # log before reporting: a Tune scheduler may end the trial at the report
        epochs, done = self.loop.train.epochs, self.progress.epoch
        # ~30 progress lines per run at most: a 150-epoch diffusion run would bury the rest
        if done % max(1, epochs // 30) == 0 or done in (1, epochs) or self.progress.stopped_early:
            _log_epoch(self.log, metrics, epochs)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=done)
        with tempfile.TemporaryDirectory() as tmp:
            self.snapshot().save(tmp)
            self.session.report(metrics, checkpoint_dir=tmp)


# ----------------------------------------------------------------------- helpers


def lr_schedule(optimizer: torch.optim.Optimizer, train_cfg: TrainConfig) -> Any:
    """The TrainConfig's LR schedule, stepped once per epoch."""
    if train_cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=train_cfg.lr_factor, patience=train_cfg.lr_patience)
    if train_cfg.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    if train_cfg.lr_schedule == "cosine":
        epochs = max(train_cfg.epochs, 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs)))
    raise ValueError(f"unknown lr_schedule {train_cfg.lr_schedule!r}; expected plateau, cosine or constant")


def all_reduce(sums: dict[str, float], device: torch.device) -> dict[str, float]:
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


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (or the network itself)."""
    return model.module if hasattr(model, "module") else model


def _resume_state(session: RayTrainSession) -> TrainState | None:
    checkpoint = session.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as ckpt_dir:
        return TrainState.load(ckpt_dir)


def _log_epoch(log: logging.Logger, metrics: dict[str, Any], epochs: int) -> None:
    shown = {k: v for k, v in metrics.items() if k.startswith(("train_loss", "val_")) and not k.startswith("val_n_")}
    text = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
    log.info(f"epoch {metrics['epoch']}/{epochs} {text} lr={metrics['lr']:.2e} ({metrics['seconds']:.1f} s)")


def _mlflow_for_rank0(target: MlflowTarget | None, rank: int) -> Any:
    if rank != 0 or target is None:
        return None
    import mlflow  # deferred: mlflow is heavy to import, and `emogen --help` imports this module

    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.start_run(run_id=target.run_id)
    return mlflow


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every report (its metrics dict and checkpoint path) and every
    persisted checkpoint at INFO from each worker: two long lines per epoch that bury the
    loop's own progress lines. The report logger is named by its module's file path, so
    look the modules up (internal: skip quietly when a Ray version moves them)."""
    try:
        # deferred: Ray Train internals, loaded in a Ray Train worker only (and they may move)
        from ray.train.v2._internal.execution import context, storage
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    logging.getLogger(storage.__name__).setLevel(logging.WARNING)
