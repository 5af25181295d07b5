"""What differs between the three models, and the registry of models.

A `Task` is small on purpose: the network it trains, a loss for a batch, validation
sums; the worker loop (emogen.training.loop) does everything else. `MODELS` pairs each
network of `emogen.models.NETWORKS` (the one list of model names) with its task: the
loop, the driver and the CLI read it; checkpoint loading needs only the networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from emogen.checkpoint import load_model, load_state
from emogen.config import EMOTIONS
from emogen.data.features import decode_mels
from emogen.models.diffusion import diffusion_loss, make_train_scheduler
from emogen.models import NETWORKS, NetworkSpec
from emogen.models.vae import LatentStatistics, vae_loss
from emogen.tracking.registry import resolve_checkpoint_ref
from emogen.training.augment import augment_mels
from emogen.training.config import TrainConfig

# Clips per worker whose encoder means fix latent diffusion's scale: the size of the first
# chunk a worker reads into memory (batches.read_into_memory), so a one-process run's scale
# is that of the first clips it trains on.
SCALE_BATCH = 256

NEEDS_VAE = "latent diffusion needs a trained VAE: pass --vae-checkpoint (a `emogen train vae` checkpoint)"


class Task:
    """The model-specific part of training; `name` is its key in MODELS."""

    name = ""

    def __init__(self, cfgs: dict[str, Any], train: TrainConfig, extra: dict[str, Any]):
        self.cfgs, self.train, self.extra = cfgs, train, extra

    def build(self) -> nn.Module:
        return NETWORKS[self.name].build(self.cfgs)

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Per-run preparation after the model is on its device (e.g. a frozen VAE)."""

    def fit_data_stats(self, model: nn.Module, train_shard: Any) -> None:
        """Statistics of the training data the model keeps (e.g. input normalization);
        called once, before the first epoch of a fresh run (a resumed model has them)."""

    def fit_input_stats(self, train_shard: Any, device: torch.device) -> None:
        """Statistics `inputs` needs (e.g. latent diffusion's latent scale), after `setup`
        and before any data is read; every worker calls it, so it may all-reduce."""

    def inputs(self, mel: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """What the model trains on, from a batch of mels [B, n_mels, T]: deterministic,
        so the loop may compute it once per clip and hold the result in memory."""
        return mel

    def loss(self, model: nn.Module, x: torch.Tensor, label: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of a training batch of `inputs` and named parts to log."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, label: torch.Tensor, epoch: int) -> dict[str, float]:
        """Validation sums for one batch (summed over items; the loop divides by count)."""
        loss, parts = self.loss(model, x, label, epoch)
        n = x.shape[0]
        return {"loss": loss.item() * n, **{k: v * n for k, v in parts.items()}}

    def end_train_pass(self, model: nn.Module) -> None:
        """After each epoch's training pass, before validation and the checkpoint (the
        model unwrapped from DDP; every worker calls it, so it may all-reduce)."""

    def finalize(self, sums: dict[str, float], count: int) -> dict[str, float]:
        return {k: v / max(count, 1) for k, v in sums.items()}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}


class SERTask(Task):
    name = "ser"

    def fit_data_stats(self, model, train_shard):
        if not self.cfgs["ser"].input_norm:
            return
        # float64 sums: a few thousand clips x 173 frames per band
        total, total_sq, count = 0.0, 0.0, 0
        for batch in train_shard.iter_batches(batch_size=256, batch_format="numpy"):
            if len(batch["label"]) == 0:
                continue
            mel = decode_mels(batch).astype(np.float64)
            total = total + mel.sum(axis=(0, 2))
            total_sq = total_sq + (mel**2).sum(axis=(0, 2))
            count += mel.shape[0] * mel.shape[2]
        if count == 0:
            return
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        model.set_input_stats(torch.from_numpy(mean), torch.from_numpy(std))

    def loss(self, model, mel, label, epoch):
        smoothing = self.train.label_smoothing
        if model.training:  # validation batches go through `evaluate`, never augmented
            mel = augment_mels(mel, self.train)
            if self.train.mixup > 0 and mel.shape[0] > 1:
                lam = float(np.random.default_rng(int(torch.randint(0, 2**31, ())))
                            .beta(self.train.mixup, self.train.mixup))
                perm = torch.randperm(mel.shape[0], device=mel.device)
                logits = model((lam * mel + (1 - lam) * mel[perm]).unsqueeze(1))
                loss = lam * F.cross_entropy(logits, label, label_smoothing=smoothing) + (1 - lam) * F.cross_entropy(
                    logits, label[perm], label_smoothing=smoothing
                )
                return loss, {}
        logits = model(mel.unsqueeze(1))
        loss = F.cross_entropy(logits, label, label_smoothing=smoothing)
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
    """Besides the loss, each epoch's training pass collects the encoder means per emotion,
    and the VAE keeps their per-emotion distribution to sample from (models.vae): the
    statistics of the pass that ended with the checkpointed weights (weights move a little
    within the pass; a second, eval-only pass over the data would lengthen every epoch)."""

    name = "vae"

    def __init__(self, cfgs, train, extra):
        super().__init__(cfgs, train, extra)
        self.latents = self._new_statistics()

    def _new_statistics(self) -> LatentStatistics:
        return LatentStatistics(keep_latents=self.cfgs["vae"].latent_components > 0)

    def kl_weight(self, epoch: int) -> float:
        warmup = self.train.kl_warmup_epochs
        return 1.0 if warmup <= 0 else min(1.0, (epoch + 1) / warmup)

    def loss(self, model, mel, label, epoch):
        vcfg = self.cfgs["vae"]
        x = mel.unsqueeze(1)
        recon, mu, logvar = model(x, label)
        if model.training:
            self.latents.add(mu, label, vcfg.num_classes)
        parts = vae_loss(
            recon, x, mu, logvar, beta=vcfg.beta, spectral_weight=vcfg.spectral_weight,
            kl_weight=self.kl_weight(epoch), recon_type=vcfg.recon_loss,
        )
        return parts["loss"], {k: v.item() for k, v in parts.items() if k != "loss"}

    def end_train_pass(self, model):
        self.latents.all_reduce()
        if self.latents.counts is not None:
            model.fit_latent_distribution(self.latents.sums, self.latents.squares, self.latents.counts, *self.latents.latents)
        self.latents = self._new_statistics()


class DiffusionTask(Task):
    """Noise prediction on mels, or on the latents of a trained VAE (latent diffusion).

    In latent space the VAE is frozen and its (scaled) posterior mean is the data; the
    VAE's weights are stored in the diffusion checkpoint so a generator is one file.
    """

    name = "diffusion"

    def __init__(self, cfgs, train, extra):
        super().__init__(cfgs, train, extra)
        self.scheduler = make_train_scheduler(cfgs["diffusion"])
        self.vae: nn.Module | None = None
        self.vae_state: dict[str, Any] | None = None
        self.latent_scale = float(extra.get("latent_scale") or cfgs["diffusion"].latent_scale)

    def setup(self, model, device):
        if self.cfgs["diffusion"].space != "latent":
            return
        reference = self.extra.get("vae_checkpoint")
        if not reference:
            raise ValueError(NEEDS_VAE)
        # resolved here, on this worker's node (fetched into its cache when remote): the
        # driver only checked and pinned the reference (driver.vae_reference)
        state = load_state(resolve_checkpoint_ref(reference, self.extra.get("vae_tracking_uri")).state_path)
        if state.get("model_name") != "vae":
            raise ValueError(f"{self.extra.get('vae_source') or reference} is a {state.get('model_name')!r} checkpoint, not a VAE")
        self.vae = load_model(state).to(device).eval()
        self.vae.requires_grad_(False)
        self.vae_state = {"config": state["configs"]["vae"], "model": self.vae.state_dict()}

    @torch.no_grad()
    def inputs(self, mel: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """[B, 1, n_mels, T] mels, or the VAE's scaled posterior means (latent space)."""
        x = mel.unsqueeze(1)
        if self.vae is None:
            return x
        mu, _ = self.vae.encode(x, label)
        return mu * self.latent_scale

    @torch.no_grad()
    def fit_input_stats(self, train_shard, device):
        """Fix the latent scale that makes the encoder means unit-variance, from every
        worker's first SCALE_BATCH training clips, summed over the workers: all ranks then
        train in one latent space, the one the checkpoint saves. A resumed run keeps its
        checkpoint's scale (Worker.start puts it in `extra`)."""
        # unit variance, as Stable Diffusion's 0.18215 does for its VAE
        if self.vae is None or self.extra.get("latent_scale") is not None:
            return
        # float64 [count, sum, sum of squares]: zeros from a worker whose shard is empty
        moments = torch.zeros(3, dtype=torch.float64, device=device)
        for batch in train_shard.iter_batches(batch_size=SCALE_BATCH, batch_format="numpy"):
            if len(batch["label"]) == 0:
                continue
            mel = torch.from_numpy(decode_mels(batch)).to(device)
            label = torch.tensor(np.asarray(batch["label"], dtype=np.int64), device=device)
            mu = self.vae.encode(mel.unsqueeze(1), label)[0].double()
            moments += torch.stack([torch.tensor(float(mu.numel()), dtype=torch.float64, device=device),
                                    mu.sum(), (mu**2).sum()])
            break
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)  # every worker calls this once, shard empty or not
        count, total, squares = moments.tolist()
        if count < 2:
            return  # no training clip anywhere: the config's scale stays
        variance = max(squares - total * total / count, 0.0) / (count - 1)  # unbiased, as torch.std
        self.latent_scale = float(1.0 / max(math.sqrt(variance), 1e-6))
        self.extra["latent_scale"] = self.latent_scale

    def loss(self, model, x, label, epoch):
        return diffusion_loss(model, self.scheduler, x, label, snr_gamma=self.cfgs["diffusion"].snr_gamma), {}

    @torch.no_grad()
    def evaluate(self, model, x, label, epoch):
        # Fixed noise and timesteps per batch position: validation loss comparable across
        # epochs; unweighted, so it stays comparable across loss weightings too.
        gen = torch.Generator(device="cpu").manual_seed(1234)
        loss = diffusion_loss(model, self.scheduler, x, label, generator=gen)
        return {"loss": loss.item() * x.shape[0]}

    def checkpoint_extra(self):
        return {"latent_scale": self.latent_scale, "vae": self.vae_state}


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class ModelSpec:
    """A trainable model: its network (emogen.models.NETWORKS) and its training task."""

    name: str
    task: type[Task]

    @property
    def network(self) -> NetworkSpec:
        return NETWORKS[self.name]

    @property
    def sections(self) -> tuple[str, ...]:
        """The config sections it is built from and saved with (the network's own first)."""
        return self.network.sections


MODELS: dict[str, ModelSpec] = {task.name: ModelSpec(task.name, task) for task in (SERTask, VAETask, DiffusionTask)}


def model_spec(model: str) -> ModelSpec:
    """MODELS[model], or a ValueError naming the known models."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    return MODELS[model]
