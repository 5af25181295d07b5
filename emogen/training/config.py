"""Training settings (optimization, augmentation, the data split) and the contracts
between the parts: the loop config the driver hands every worker of one training, and
what a sweep's driver hands each of its trials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emogen.config import AudioConfig, replace
from emogen.presets import preset_sections


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
    # "plateau" (above), "cosine" (lr decays to 0 over the epochs by a half cosine) or
    # "constant" (diffusion with a weight average: the average does the annealing)
    lr_schedule: str = "plateau"
    # An exponential moving average of the weights, updated every optimizer step and
    # saved beside them; checkpoints then load the average (emogen.training.ema). 0 = off.
    ema_decay: float = 0.0
    early_stopping_patience: int = 0
    kl_warmup_epochs: int = 0  # VAE: KL weight ramps 0 -> 1 over these epochs
    label_smoothing: float = 0.0  # SER
    mixup: float = 0.0  # SER: Beta(mixup, mixup) mixing of batch pairs (0 = off)
    # SER input augmentation (training batches only; `augment_mels`): shift along the mel
    # axis by up to freq_shift bins (speaker / vocal-tract variation), roll in time, and
    # spec_masks frequency and time masks (SpecAugment) up to the given widths.
    freq_shift: int = 0
    time_roll: bool = False
    spec_masks: int = 0
    freq_mask_width: int = 12
    time_mask_width: int = 20
    seed: int = 0
    # The speaker-independent split (emogen.data.datasets.speaker_split), same for all models.
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    amp: bool = True  # mixed precision, only ever on CUDA
    shuffle_buffer: int = 512
    # A worker's training and validation splits are read once into tensors (after the
    # task's input transform, e.g. the frozen VAE's latents) and reshuffled every epoch,
    # when they fit in this many MB; bigger splits stream from Ray Data every epoch
    # (shuffled through shuffle_buffer). 0 = always stream.
    in_memory_mb: float = 2048.0


def train_config(model: str, preset: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a preset's "train" and "train_<model>" sections, then overrides."""
    sections = preset_sections(preset)
    values = {**sections.get("train", {}), **sections.get(f"train_{model}", {}), **(overrides or {})}
    return replace(TrainConfig(), values)


@dataclass
class MlflowTarget:
    """The MLflow run a training logs its per-epoch metrics to (from the rank-0 worker)."""

    tracking_uri: str
    run_id: str


@dataclass
class LoopConfig:
    """Everything the worker loop needs for one training, built at the driver (`loop_config`)
    and pickled to each worker; the caller fills in mlflow, run_dir and label."""

    model: str  # a key of MODELS: "ser" | "vae" | "diffusion"
    configs: dict[str, dict[str, Any]]  # the network/diffusion sections as plain dicts (what state.pt stores)
    train: TrainConfig
    audio: AudioConfig
    # latent diffusion: the VAE, as a reference each worker resolves on its own node (an
    # absolute local state.pt, an s3:// state.pt, models:/NAME/VERSION; driver.vae_reference)
    vae_checkpoint: str | None = None
    vae_source: str | None = None  # what the user named it by (a path, s3://, models:/ or runs:/ URI)
    vae_tracking_uri: str | None = None  # where a models:/ or runs:/ vae_checkpoint resolves
    mlflow: MlflowTarget | None = None
    run_dir: str | None = None  # where the training's checkpoints live (a local path or a storage URI)
    label: str | None = None  # what its log lines start with (default: the model name)

    def task_extra(self) -> dict[str, Any]:
        """The task's extra inputs (Task.extra): the VAE a latent diffusion trains on."""
        return {"vae_checkpoint": self.vae_checkpoint, "vae_source": self.vae_source,
                "vae_tracking_uri": self.vae_tracking_uri}


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (the sampled config is each trial's own)."""

    model: str
    preset: str
    epochs: int  # per trial (ASHA's max_t)
    name: str  # the sweep's name
    tracking_uri: str
    experiment_id: str
    parent_run_id: str  # the sweep's MLflow run
    num_workers: int = 1  # > 1: an inner TorchTrainer per trial
    use_gpu: bool = False
    vae_checkpoint: str | None = None  # pinned at the sweep's driver (driver.vae_reference), resolved in each trial
    train_storage: str = ""  # where multi-worker trials' inner Ray Train runs keep their checkpoints (a path or URI)
    resources_per_worker: dict[str, float] | None = None  # of a multi-worker trial's workers
