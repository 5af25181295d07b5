"""Training: one loop for the SER, the VAE and the diffusion U-Net, run by Ray Train.

`train_loop_per_worker(config)` is a plain function: Ray's TorchTrainer runs it on 1 CPU
worker in a test and on 32 GPU workers on a cluster. The model-specific parts are three
small `Task`s (build the network, a loss for a batch, validation sums); everything else
(data shards, DDP, mixed precision on GPU, LR schedule, early stopping, atomic
checkpoints every epoch, resume, MLflow) is shared.

Reading order: configuration, checkpoints, tasks, the worker loop, the driver (`fit`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emogen.config import EMOTIONS, AudioConfig, replace
from emogen.presets import model_configs, preset_sections

MODELS = ("ser", "vae", "diffusion")
STATE_FILE = "state.pt"


# ------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TrainConfig:
    """Optimization and data settings; SPEC defaults (batch 16, lr 3e-4, clip 0.5)."""

    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.5
    # ReduceLROnPlateau on the validation loss; early stopping after this many epochs
    # without improvement (0 = never stop early).
    lr_factor: float = 0.5
    lr_patience: int = 2
    early_stopping_patience: int = 0
    kl_warmup_epochs: int = 0  # VAE: KL weight ramps 0 -> 1 over these epochs
    label_smoothing: float = 0.0  # SER
    # SER input augmentation (training batches only; `augment_mels`): shift along the mel
    # axis by up to freq_shift bins (speaker / vocal-tract variation), roll in time, and
    # spec_masks frequency and time masks (SpecAugment) up to the given widths.
    freq_shift: int = 0
    time_roll: bool = False
    spec_masks: int = 0
    freq_mask_width: int = 12
    time_mask_width: int = 20
    seed: int = 0
    # The speaker-independent split (emogen.datasets.speaker_split), same for all models.
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    amp: bool = True  # mixed precision, only ever on CUDA
    shuffle_buffer: int = 512
    # Fault-tolerance drills: the rank-0 worker kills its process once, at the start of
    # this epoch (a marker file in the run directory makes it happen only once).
    fail_at_epoch: int = -1


def train_config(model: str, preset: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a preset's "train" and "train_<model>" sections, then overrides."""
    sections = preset_sections(preset)
    values = {**sections.get("train", {}), **sections.get(f"train_{model}", {}), **(overrides or {})}
    return replace(TrainConfig(), values)


# --------------------------------------------------------------------- checkpoints


def atomic_write(target: str | Path, write: Callable[[str], None]) -> Path:
    """write(tmp_path) into a temp file beside target, then rename it over target: a crash
    never leaves half a file (checkpoints, results.json)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write <directory>/state.pt atomically."""
    return atomic_write(Path(directory) / STATE_FILE, lambda tmp: torch.save(state, tmp))


def resolve_checkpoint(path: str | Path) -> Path:
    """A state.pt, a checkpoint directory, or a run directory (its newest checkpoint_*)."""
    path = Path(path)
    if path.is_dir() and not (path / STATE_FILE).exists():
        # Ray names checkpoints checkpoint_<timestamp>: the last in name order is the newest
        candidates = sorted(p for p in path.glob("checkpoint_*") if (p / STATE_FILE).exists())
        if candidates:
            path = candidates[-1]
    return path / STATE_FILE if path.is_dir() else path


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint (see resolve_checkpoint) -> the state dict, loaded with weights_only=True."""
    path = resolve_checkpoint(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def _plain(value: Any) -> Any:
    """Config values -> types torch.load(weights_only=True) accepts (tuples -> lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- tasks


class Task:
    """What differs between the three models. Subclasses are small on purpose."""

    name = ""

    def __init__(self, cfgs: dict[str, Any], train: TrainConfig, extra: dict[str, Any]):
        self.cfgs, self.train, self.extra = cfgs, train, extra

    def build(self) -> nn.Module:
        raise NotImplementedError

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Per-run preparation after the model is on its device (e.g. a frozen VAE)."""

    def loss(self, model: nn.Module, mel: torch.Tensor, label: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, mel: torch.Tensor, label: torch.Tensor, epoch: int) -> dict[str, float]:
        """Validation sums for one batch (summed over items; the loop divides by count)."""
        loss, parts = self.loss(model, mel, label, epoch)
        n = mel.shape[0]
        return {"loss": loss.item() * n, **{k: v * n for k, v in parts.items()}}

    def finalize(self, sums: dict[str, float], count: int) -> dict[str, float]:
        return {k: v / max(count, 1) for k, v in sums.items()}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}


def augment_mels(mel: torch.Tensor, cfg: TrainConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """A training batch of scaled log-mels [B, n_mels, frames] with random, per-clip
    frequency shift (edge-padded), time roll and SpecAugment masks (filled with the clip's
    minimum, i.e. silence). The SER overfits a few training speakers without them."""
    batch, n_mels, frames = mel.shape
    device = mel.device

    def randint(high: torch.Tensor | int, size: tuple[int, ...]) -> torch.Tensor:
        u = torch.rand(size, generator=generator, device="cpu").to(device)
        return (u * high).long()

    if cfg.freq_shift > 0:
        shift = randint(2 * cfg.freq_shift + 1, (batch, 1)) - cfg.freq_shift
        index = (torch.arange(n_mels, device=device)[None] - shift).clamp(0, n_mels - 1)
        mel = mel.gather(1, index[:, :, None].expand(batch, n_mels, frames))
    if cfg.time_roll:
        roll = randint(frames, (batch, 1))
        index = (torch.arange(frames, device=device)[None] - roll) % frames
        mel = mel.gather(2, index[:, None, :].expand(batch, n_mels, frames))
    if cfg.spec_masks > 0:
        floor = mel.amin(dim=(1, 2), keepdim=True)
        for axis, size, width in ((1, n_mels, cfg.freq_mask_width), (2, frames, cfg.time_mask_width)):
            positions = torch.arange(size, device=device)[None]
            for _ in range(cfg.spec_masks):
                w = randint(min(width, size) + 1, (batch, 1))
                start = (torch.rand((batch, 1), generator=generator).to(device) * (size - w + 1)).long()
                hit = (positions >= start) & (positions < start + w)  # [B, size]
                hit = hit[:, :, None] if axis == 1 else hit[:, None, :]
                mel = torch.where(hit, floor, mel)
    return mel


class SERTask(Task):
    name = "ser"

    def build(self) -> nn.Module:
        from emogen.models.ser import ResNetSER

        return ResNetSER(self.cfgs["ser"])

    def loss(self, model, mel, label, epoch):
        if model.training:  # validation batches go through `evaluate`, never augmented
            mel = augment_mels(mel, self.train)
        logits = model(mel.unsqueeze(1))
        loss = F.cross_entropy(logits, label, label_smoothing=self.train.label_smoothing)
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model, mel, label, epoch):
        logits = model(mel.unsqueeze(1))
        pred = logits.argmax(dim=1)
        sums = {"loss": F.cross_entropy(logits, label, reduction="sum").item(), "correct": (pred == label).sum().item()}
        for k in range(len(EMOTIONS)):  # per-class counts -> unweighted accuracy after reduction
            sums[f"n_{k}"] = (label == k).sum().item()
            sums[f"hit_{k}"] = ((label == k) & (pred == k)).sum().item()
        return sums

    def finalize(self, sums, count):
        recalls = [sums[f"hit_{k}"] / sums[f"n_{k}"] for k in range(len(EMOTIONS)) if sums.get(f"n_{k}", 0) > 0]
        return {
            "loss": sums.get("loss", 0.0) / max(count, 1),
            "accuracy": sums.get("correct", 0.0) / max(count, 1),
            "uar": float(np.mean(recalls)) if recalls else 0.0,
        }


class VAETask(Task):
    name = "vae"

    def build(self) -> nn.Module:
        from emogen.models.vae import ConditionalVAE

        return ConditionalVAE(self.cfgs["vae"])

    def kl_weight(self, epoch: int) -> float:
        warmup = self.train.kl_warmup_epochs
        return 1.0 if warmup <= 0 else min(1.0, (epoch + 1) / warmup)

    def loss(self, model, mel, label, epoch):
        from emogen.models.vae import vae_loss

        vcfg = self.cfgs["vae"]
        x = mel.unsqueeze(1)
        recon, mu, logvar = model(x, label)
        parts = vae_loss(
            recon, x, mu, logvar, beta=vcfg.beta, spectral_weight=vcfg.spectral_weight,
            kl_weight=self.kl_weight(epoch), recon_type=vcfg.recon_loss,
        )
        return parts["loss"], {k: v.item() for k, v in parts.items() if k != "loss"}


class DiffusionTask(Task):
    """Noise prediction on mels, or on the latents of a trained VAE (latent diffusion).

    In latent space the VAE is frozen and its (scaled) posterior mean is the data; the
    VAE's weights are stored in the diffusion checkpoint so a generator is one file.
    """

    name = "diffusion"

    def __init__(self, cfgs, train, extra):
        super().__init__(cfgs, train, extra)
        from emogen.diffusion import make_train_scheduler

        self.scheduler = make_train_scheduler(cfgs["diffusion"])
        self.vae: nn.Module | None = None
        self.vae_state: dict[str, Any] | None = None
        self.latent_scale = float(extra.get("latent_scale") or cfgs["diffusion"].latent_scale)

    def build(self) -> nn.Module:
        from emogen.models.unet import UNet

        return UNet(self.cfgs["unet"])

    def setup(self, model, device):
        if self.cfgs["diffusion"].space != "latent":
            return
        from emogen.models.vae import ConditionalVAE, VAEConfig

        path = self.extra.get("vae_checkpoint")
        if not path:
            raise ValueError(NEEDS_VAE)
        state = load_state(path)
        if state.get("model_name") != "vae":
            raise ValueError(f"{path} is a {state.get('model_name')!r} checkpoint, not a VAE")
        vae_cfg = replace(VAEConfig(), state["configs"]["vae"])
        self.vae = ConditionalVAE(vae_cfg).to(device).eval()
        self.vae.load_state_dict(state["best_model"] or state["model"])
        self.vae.requires_grad_(False)
        self.vae_state = {"config": state["configs"]["vae"], "model": self.vae.state_dict()}

    @torch.no_grad()
    def to_space(self, mel: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x = mel.unsqueeze(1)
        if self.vae is None:
            return x
        mu, _ = self.vae.encode(x, label)
        if self.extra.get("latent_scale") is None:
            # First batch fixes the scale (unit variance, as Stable Diffusion's 0.18215);
            # it is saved in the checkpoint, so a resumed run keeps the same space.
            self.latent_scale = float(1.0 / mu.std().clamp(min=1e-6))
            self.extra["latent_scale"] = self.latent_scale
        return mu * self.latent_scale

    def loss(self, model, mel, label, epoch):
        from emogen.diffusion import diffusion_loss

        return diffusion_loss(model, self.scheduler, self.to_space(mel, label), label), {}

    @torch.no_grad()
    def evaluate(self, model, mel, label, epoch):
        from emogen.diffusion import diffusion_loss

        # Fixed noise and timesteps per batch position: validation loss comparable across epochs.
        gen = torch.Generator(device="cpu").manual_seed(1234)
        loss = diffusion_loss(model, self.scheduler, self.to_space(mel, label), label, generator=gen)
        return {"loss": loss.item() * mel.shape[0]}

    def checkpoint_extra(self):
        return {"latent_scale": self.latent_scale, "vae": self.vae_state}


TASKS: dict[str, type[Task]] = {"ser": SERTask, "vae": VAETask, "diffusion": DiffusionTask}


# ------------------------------------------------------------------ the runner hook


class RayTrainSession:
    """What the worker loop needs from whoever runs it; by default, Ray Train.

    `emogen.sweep` swaps in a Ray Tune trial (`use_session`) so a single-worker trial
    runs this same loop in its own process (Ray Train's functions refuse to run inside
    a Tune trial). Reports carry a checkpoint *directory*; the session wraps it in its
    own Checkpoint class.
    """

    def get_context(self) -> Any:
        import ray.train

        return ray.train.get_context()  # get_world_rank(), get_world_size()

    def get_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def get_dataset_shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)

    def get_device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


class _SingleProcessContext:
    def get_world_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 1


class SingleProcessSession(RayTrainSession):
    """The loop in the current process (a Ray task, a Tune trial): one worker, no DDP,
    the given (materialized) datasets as shards. Subclasses decide where reports go."""

    def __init__(self, datasets: dict[str, Any], use_gpu: bool = False):
        self.datasets = datasets
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def get_context(self) -> Any:
        return _SingleProcessContext()

    def get_dataset_shard(self, name: str) -> Any:
        return self.datasets[name]

    def get_device(self) -> torch.device:
        return self.device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)


class DirectorySession(SingleProcessSession):
    """Checkpoints to <run_dir>/state.pt (atomically, every epoch) and resumes from it:
    a retried Ray task continues where the lost one stopped."""

    def __init__(self, datasets: dict[str, Any], run_dir: str | Path, use_gpu: bool = False):
        super().__init__(datasets, use_gpu)
        self.run_dir = Path(run_dir)

    def get_checkpoint(self) -> Any:
        import ray.train

        return ray.train.Checkpoint.from_directory(str(self.run_dir)) if (self.run_dir / STATE_FILE).exists() else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        if checkpoint_dir:
            source = Path(checkpoint_dir) / STATE_FILE
            atomic_write(self.run_dir / STATE_FILE, lambda tmp: shutil.copyfile(source, tmp))


def train_in_process(loop: dict[str, Any], datasets: dict[str, Any], run_dir: str | Path, use_gpu: bool = False) -> dict[str, Any]:
    """Run `train_loop_per_worker` here (e.g. inside a Ray task) with checkpoints in
    run_dir; returns the final state's summary. Many small trainings (an experiment's
    SERs) then run side by side as tasks instead of one Ray Train run after another."""
    loop = {**loop, "run_dir": str(run_dir)}
    session = DirectorySession(datasets, run_dir, use_gpu)
    previous = use_session(session)
    try:
        train_loop_per_worker(loop)
    finally:
        use_session(previous)
        if loop.get("mlflow"):
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.end_run()
    final = load_state(run_dir)
    return {
        "checkpoint": str(Path(run_dir).resolve()),
        "epochs_completed": final["epoch"],
        "stopped_early": final["stopped_early"],
        "resumed_from": final["resumes"],
        "history": final["history"],
        "metrics": final["history"][-1] if final["history"] else {},
    }


_SESSION: RayTrainSession | None = None


def use_session(session: RayTrainSession | None) -> RayTrainSession | None:
    """Run `train_loop_per_worker` under another session (None: Ray Train); returns the old one."""
    global _SESSION
    previous, _SESSION = _SESSION, session
    return previous


def _session() -> RayTrainSession:
    return _SESSION if _SESSION is not None else RayTrainSession()


# ---------------------------------------------------------------- the worker loop


def _batches(shard: Any, batch_size: int, device: torch.device, shuffle: int = 0):
    from emogen.data import decode_mels

    kwargs = {"local_shuffle_buffer_size": shuffle} if shuffle else {}
    # numpy batches: converting each batch to pandas cost ~50 ms (measured Ray Train overhead)
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=False, **kwargs):
        if len(batch["label"]) == 0:
            continue
        mel = torch.from_numpy(decode_mels(batch)).to(device, non_blocking=True)
        yield mel, torch.tensor(np.asarray(batch["label"], dtype=np.int64), device=device)


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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (also runs unchanged with 1 worker in tests).

    config: model ("ser" | "vae" | "diffusion"), configs (model config dicts),
    train (TrainConfig dict), audio (AudioConfig dict), extra (e.g. vae_checkpoint),
    mlflow ({"tracking_uri", "run_id"} or None), run_dir (for the failure drill), and
    optionally label (the log prefix, default the model name).
    """
    from emogen.models.ser import SERConfig
    from emogen.models.unet import UNetConfig
    from emogen.models.vae import VAEConfig
    from emogen.diffusion import DiffusionConfig

    session = _session()
    context = session.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    train_cfg = TrainConfig(**config["train"])
    classes = {"ser": SERConfig, "vae": VAEConfig, "unet": UNetConfig, "diffusion": DiffusionConfig}
    cfgs = {k: replace(classes[k](), v) for k, v in config["configs"].items()}
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

    task = TASKS[config["model"]](cfgs, train_cfg, extra)
    model = task.build()
    if state is not None:
        model.load_state_dict(state["model"])
    model = session.prepare_model(model)
    task.setup(model, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=train_cfg.lr_factor, patience=train_cfg.lr_patience)
    use_amp = train_cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best, bad_epochs, history, resumes, best_model = 0, math.inf, 0, [], [], None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        plateau.load_state_dict(state["lr_scheduler"])
        if use_amp and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        start_epoch, best, bad_epochs = state["epoch"], state["best"], state["bad_epochs"]
        history, resumes, best_model = state["history"], state["resumes"] + [state["epoch"]], state["best_model"]

    mlflow = _mlflow_for_rank0(config.get("mlflow"), rank)
    train_shard = session.get_dataset_shard("train")
    val_shard = session.get_dataset_shard("val")
    stopped_early = state is not None and state.get("stopped_early", False)
    steps = int(history[-1].get("steps", 0)) if history else 0  # optimizer steps so far, per worker
    log_name = config.get("label") or task.name  # names the run in interleaved logs
    if rank == 0:
        print(f"[{log_name}] {world} worker(s) on {device.type}, {torch.get_num_threads()} torch thread(s) each", flush=True)
        if start_epoch:
            print(f"[{log_name}] resuming from the checkpoint of epoch {start_epoch}", flush=True)

    for epoch in range(start_epoch, train_cfg.epochs):
        if stopped_early:
            break
        if train_cfg.fail_at_epoch == epoch and rank == 0:
            marker = Path(config["run_dir"]) / f".failed-at-epoch-{epoch}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                print(f"[{log_name}] failure drill: worker exits at the start of epoch {epoch}", flush=True)
                os._exit(1)
        started = time.time()
        model.train()
        train_sums, seen = {"loss": 0.0}, 0
        for mel, label in _batches(train_shard, train_cfg.batch_size, device, train_cfg.shuffle_buffer):
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss, parts = task.loss(model, mel, label, epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            steps += 1
            n = mel.shape[0]
            train_sums["loss"] += loss.item() * n
            for k, v in parts.items():
                train_sums[k] = train_sums.get(k, 0.0) + v * n
            seen += n
        train_sums["count"] = seen
        train_sums = _all_reduce(train_sums, device)
        count = train_sums.pop("count")
        metrics = {f"train_{k}": v / max(count, 1) for k, v in train_sums.items()}

        model.eval()
        val_sums: dict[str, float] = {}
        val_count = 0
        for mel, label in _batches(val_shard, train_cfg.batch_size, device):
            for k, v in task.evaluate(model, mel, label, epoch).items():
                val_sums[k] = val_sums.get(k, 0.0) + v
            val_count += mel.shape[0]
        val_sums["count"] = val_count
        val_sums = _all_reduce(val_sums, device)
        val_count = int(val_sums.pop("count"))
        if val_count:  # tiny corpora may have no validation speaker: then train loss decides
            metrics.update({f"val_{k}": v for k, v in task.finalize(val_sums, val_count).items()})
        monitor = metrics.get("val_loss", metrics["train_loss"])
        plateau.step(monitor)
        if monitor < best - 1e-6:
            best, bad_epochs = monitor, 0
            best_model = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
        else:
            bad_epochs += 1
        stopped_early = 0 < train_cfg.early_stopping_patience <= bad_epochs
        metrics.update(
            epoch=epoch + 1, steps=steps, lr=optimizer.param_groups[0]["lr"], seconds=time.time() - started,
            best_val=best, stopped_early=stopped_early,
        )
        history.append({k: float(v) for k, v in metrics.items()})

        state = {
            "model_name": task.name,
            "model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
            "best_model": best_model,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": plateau.state_dict(),
            "grad_scaler": scaler.state_dict() if use_amp else None,
            "epoch": epoch + 1,
            "best": best,
            "bad_epochs": bad_epochs,
            "stopped_early": stopped_early,
            "history": history,
            "resumes": resumes,
            "configs": _plain(config["configs"]),
            "train": _plain(config["train"]),
            "audio": _plain(config["audio"]),
            "extra": task.checkpoint_extra(),
        }
        if rank == 0:  # log before reporting: a Tune scheduler may end the trial at the report
            _log_epoch(log_name, metrics, train_cfg.epochs)
            if mlflow is not None:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch + 1)
        _report(metrics, state if rank == 0 else None)
        if stopped_early:
            if rank == 0:
                print(f"[{log_name}] early stop: no improvement for {bad_epochs} epochs", flush=True)
            break
    else:
        if state is not None and start_epoch >= train_cfg.epochs and history:
            # A finished run re-run by name: nothing to train, report where it stands.
            _report(dict(history[-1]), None)


def _report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    if state is None:
        _session().report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_state(tmp, state)
        _session().report(metrics, checkpoint_dir=tmp)


def _log_epoch(name: str, metrics: dict[str, Any], epochs: int) -> None:
    shown = {k: v for k, v in metrics.items() if k.startswith(("train_loss", "val_")) and not k.startswith("val_n_")}
    text = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
    print(f"[{name}] epoch {metrics['epoch']}/{epochs} {text} lr={metrics['lr']:.2e} ({metrics['seconds']:.1f} s)", flush=True)


def _mlflow_for_rank0(settings: dict[str, Any] | None, rank: int):
    if rank != 0 or not settings:
        return None
    import mlflow

    mlflow.set_tracking_uri(settings["tracking_uri"])
    mlflow.start_run(run_id=settings["run_id"])
    return mlflow


# --------------------------------------------------------------------- the driver


def split_assignment(features: str | Path, train_cfg: TrainConfig) -> dict[str, str]:
    """clip_id -> "train" | "val" | "test", speaker-independent, from the features' metadata."""
    from emogen.data import read_features
    from emogen.datasets import speaker_split

    meta = read_features(features, columns=["clip_id", "speaker", "dataset"])
    if meta.empty:
        raise ValueError(f"{features} holds no accepted clips")
    split = speaker_split(meta, train_cfg.val_fraction, train_cfg.test_fraction, seed=train_cfg.split_seed)
    return dict(zip(meta["clip_id"], split))


def select_split(batch: Any, keep: frozenset[str] | None) -> Any:
    """Ray Data batch function: one split's accepted rows (keep=None: all of them). Mels
    stay encoded as bytes (decoded by the worker), so an empty selection is just an empty frame."""
    rows = batch[batch["status"] == "ok"]
    if keep is not None:
        rows = rows[rows["clip_id"].isin(keep)]
    return rows[["mel", "n_mels", "n_frames", "label"]]


def _features_path(features: str | Path) -> str:
    from emogen.data import FEATURES_DIR

    path = Path(features)
    return str(path / FEATURES_DIR if (path / FEATURES_DIR).is_dir() else path)


def split_datasets(
    features: str | Path, assignment: dict[str, str], splits=("train", "val"), extra_train: list[str | Path] = ()
) -> dict[str, Any]:
    """One Ray dataset per split, materialized before training starts.

    extra_train: more features datasets (e.g. generated clips) added whole to training.
    Features of a few thousand clips fit in the object store (~90 KB each), every epoch
    re-reads them, and a pipeline still running when the workers hold every CPU would
    wait forever for a CPU of its own.
    """
    import ray

    columns = ["clip_id", "status", "label", "mel", "n_mels", "n_frames"]
    source = ray.data.read_parquet(_features_path(features), columns=columns)
    datasets = {}
    for split in splits:
        keep = frozenset(cid for cid, s in assignment.items() if s == split)
        datasets[split] = source.map_batches(select_split, fn_kwargs={"keep": keep}, batch_format="pandas")
    for extra in extra_train:
        more = ray.data.read_parquet(_features_path(extra), columns=columns)
        datasets["train"] = datasets["train"].union(more.map_batches(select_split, fn_kwargs={"keep": None}, batch_format="pandas"))
    return {split: ds.materialize() for split, ds in datasets.items()}


def read_clip_ids(features: str | Path) -> list[str]:
    from emogen.data import read_features

    return read_features(features, columns=["clip_id"])["clip_id"].tolist()


NEEDS_VAE = "latent diffusion needs a trained VAE: pass --vae-checkpoint (a `emogen train vae` checkpoint)"


def require_vae(model: str, diffusion: Any, vae_checkpoint: str | Path | None) -> None:
    """Fail before any worker starts when latent diffusion (a DiffusionConfig) has no VAE."""
    if model == "diffusion" and diffusion.space == "latent" and not vae_checkpoint:
        raise ValueError(NEEDS_VAE)


def loop_config(
    model: str,
    preset: str,
    overrides: dict[str, Any] | None = None,
    epochs: int | None = None,
    vae_checkpoint: str | Path | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `train_loop_per_worker` config for a model of a preset (+ override sections),
    and the params to log for it. The caller fills in "mlflow" and "run_dir"."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    overrides = {k: dict(v) if isinstance(v, dict) else v for k, v in (overrides or {}).items()}
    train_over = {**dict(overrides.pop("train", None) or {}), **(train_overrides or {})}
    if epochs is not None:
        train_over["epochs"] = epochs
    train_cfg = train_config(model, preset, train_over)
    cfgs = model_configs(preset, overrides)
    require_vae(model, cfgs["diffusion"], vae_checkpoint)
    wanted = {"ser": ["ser"], "vae": ["vae"], "diffusion": ["unet", "diffusion"]}[model]
    config = {
        "model": model,
        "configs": {k: dataclasses.asdict(cfgs[k]) for k in wanted},
        "train": dataclasses.asdict(train_cfg),
        "audio": dataclasses.asdict(AudioConfig()),
        "extra": {"vae_checkpoint": str(Path(vae_checkpoint).resolve()) if vae_checkpoint else None},
        "mlflow": None,
        "run_dir": None,
    }
    params = {"model": model, "preset": preset, "train": config["train"], **config["configs"]}
    return config, params


def start_child_run(
    run_name: str, model: str, params: dict[str, Any], tracking_uri: str | None = None, parent_run_id: str | None = None
) -> str:
    """The MLflow run of a training run name: found again on resume, else created with its
    params (as a child of parent_run_id when given). Returns the run id."""
    from emogen import tracking

    return tracking.get_or_create_run(run_name, {"emogen.model": model}, params, tracking_uri, parent_run_id)


def fit(
    model: str,
    features: str | Path,
    preset: str = "demo",
    overrides: dict[str, Any] | None = None,
    epochs: int | None = None,
    num_workers: int = 1,
    use_gpu: bool = False,
    storage_path: str | Path = "runs/train",
    run_name: str | None = None,
    tracking_uri: str | None = None,
    vae_checkpoint: str | None = None,
    max_failures: int = 1,
    fail_at_epoch: int = -1,
    extra_train: list[str | Path] | None = None,
    parent_run_id: str | None = None,
    cpus_per_worker: float | None = None,
) -> dict[str, Any]:
    """Train one model with Ray Train and return a summary (metrics, checkpoint, MLflow run).

    overrides: {"train": {...}, "ser": {...}, ...} on top of the preset. Re-running with
    the same storage_path and run_name resumes from the run's latest checkpoint.
    extra_train: features datasets added to the training split only (generated clips).
    parent_run_id: make the MLflow run a child of this one (an experiment's parent run).
    cpus_per_worker: CPUs (= torch threads) per worker; default Ray Train's 1.
    """
    import mlflow
    import ray.train
    from ray.train.torch import TorchTrainer

    from emogen import tracking

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    train_over = {"fail_at_epoch": fail_at_epoch} if fail_at_epoch >= 0 else {}
    loop, params = loop_config(model, preset, overrides, epochs, vae_checkpoint, train_over)
    train_cfg = TrainConfig(**loop["train"])
    run_name = run_name or f"{model}-{preset}"
    storage = str(Path(storage_path).resolve()) if "://" not in str(storage_path) else str(storage_path)
    run_dir = f"{storage}/{run_name}"

    assignment = split_assignment(features, train_cfg)
    counts = {s: sum(v == s for v in assignment.values()) for s in ("train", "val", "test")}
    extra_train = [str(p) for p in (extra_train or [])]
    counts["extra_train"] = sum(len(read_clip_ids(p)) for p in extra_train)
    if counts["train"] == 0:
        raise ValueError("the speaker split left no training clips")

    params.update(extra_train=",".join(extra_train), split_counts=counts, num_workers=num_workers)
    run_id = start_child_run(run_name, model, params, tracking_uri, parent_run_id)
    loop["mlflow"] = {"tracking_uri": tracking.resolve_tracking_uri(tracking_uri), "run_id": run_id}
    loop["run_dir"] = run_dir
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})} if cpus_per_worker else None,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets=split_datasets(features, assignment, extra_train=extra_train),
    )
    started = time.time()
    result = trainer.fit()
    seconds = time.time() - started
    if result.checkpoint is None:
        raise RuntimeError(f"training {model} produced no checkpoint (error: {result.error})")

    with result.checkpoint.as_directory() as ckpt_dir:
        final = load_state(ckpt_dir)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifact(str(Path(ckpt_dir) / STATE_FILE), artifact_path="model")
            mlflow.set_tag("emogen.checkpoint", result.checkpoint.path)
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    return {
        "model": model,
        "preset": preset,
        "run_name": run_name,
        "epochs_completed": final["epoch"],
        "resumed_from": final["resumes"],
        "stopped_early": final["stopped_early"],
        "metrics": metrics,
        "checkpoint": result.checkpoint.path,
        "mlflow_run_id": run_id,
        "tracking_uri": tracking.resolve_tracking_uri(tracking_uri),
        "split_counts": counts,
        "seconds": round(seconds, 1),
    }
