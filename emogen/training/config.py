"""Training settings: optimization, augmentation, the data split, fault-tolerance drills."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emogen.config import replace
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
    # Fault-tolerance drills: the rank-0 worker kills its process once, at the start of
    # this epoch (a marker file in the run directory makes it happen only once).
    fail_at_epoch: int = -1


def train_config(model: str, preset: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a preset's "train" and "train_<model>" sections, then overrides."""
    sections = preset_sections(preset)
    values = {**sections.get("train", {}), **sections.get(f"train_{model}", {}), **(overrides or {})}
    return replace(TrainConfig(), values)
