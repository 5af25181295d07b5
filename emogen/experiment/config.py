"""What an experiment does: `ExperimentConfig` (one `emogen experiment` option per field), the
preset's defaults under it, and how the experiment's preset overrides reach each model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emogen.config import replace
from emogen.models.diffusion import SAMPLERS
from emogen.models.vae import LATENT_SOURCES
from emogen.options import option
from emogen.presets import preset_sections


@dataclass(frozen=True)
class ExperimentConfig:
    """What the experiment does; a preset's "experiment" section sets the defaults. Every
    field is an `emogen experiment` option of the same name (--per-emotion, ...)."""

    # EmoDB's 10 speakers in 5 folds: 2 held out per fold
    folds: int = option(5, "speaker folds: each holds out its own test speakers, every speaker is tested once")
    seeds: tuple[int, ...] = option((0, 1, 2), "SER / sampling seeds (per fold)")
    # Generated clips per emotion: per_emotion if > 0, else ratio x real training clips / 6
    # (balanced over the emotions whatever the real class balance is).
    per_emotion: int = option(0, "generated clips per emotion (0: from --ratio)")
    ratio: float = option(1.0, "generated / real training clips, balanced over emotions")
    # None: the preset's diffusion sampler, steps and guidance
    sampler: str | None = option(None, "diffusion sampler (default: the preset's)", choices=tuple(SAMPLERS))
    steps: int | None = option(None, "sampling steps (default: the preset's)")
    guidance_scale: float | None = option(None, "classifier-free guidance (default: the preset's)")
    # models.vae: the emotion's fitted latent distribution, or the prior N(0, I)
    vae_latent: str = option("posterior", "VAE latents: each emotion's fitted distribution or the prior",
                             choices=LATENT_SOURCES)
    min_confidence: float = option(
        0.0, "keep generated clips the seed's real-trained SER gives >= this probability for their emotion")
    # None: the preset's train_ser / train_vae / train_diffusion
    ser_epochs: int | None = option(None, "epochs of every SER (default: the preset's)")
    vae_epochs: int | None = option(None, "VAE epochs (default: the preset's)")
    diffusion_epochs: int | None = option(None, "diffusion epochs (default: the preset's)")
    num_workers: int = option(1, "Ray Train workers for the VAE and diffusion trainings")
    cpus_per_worker: float | None = option(None, "CPUs (torch threads) per VAE / diffusion worker (default: Ray Train's 1)")
    use_gpu: bool = option(False, "GPUs for training, generation and evaluation")
    cpus_per_task: float = option(1.0, "CPUs per SER training / generation task")
    wavs_per_emotion: int = option(1, "Griffin-Lim clips per emotion and source in the report")
    # the judge SER's seed: it must not be the filter (a seed's baseline SER) in disguise
    judge_seed: int = option(1000, "seed of the SER that judges generated clips (trained on train+val)")
    register_prefix: str = option("emogen", "register each fold's generators and baseline SERs in the MLflow model "
                                  "registry as PREFIX-vae, PREFIX-diffusion, PREFIX-ser ('': do not register)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise ValueError("the experiment needs at least one seed")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2 (every speaker is tested once), got {self.folds}")
        if self.per_emotion < 0 or self.ratio < 0:
            raise ValueError("per_emotion and ratio must be >= 0")
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError("min_confidence must be in [0, 1)")
        if self.wavs_per_emotion < 1 or self.num_workers < 1:
            raise ValueError("wavs_per_emotion and num_workers must be >= 1")
        if self.cpus_per_task <= 0 or (self.cpus_per_worker is not None and self.cpus_per_worker <= 0):
            raise ValueError("cpus_per_task and cpus_per_worker must be > 0")

    def sampling(self) -> dict[str, Any]:
        """The diffusion generator's sampling options (None: the preset's)."""
        return {"sampler": self.sampler, "steps": self.steps, "guidance_scale": self.guidance_scale}


def experiment_config(preset: str, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """The preset's experiment section with overrides on top (None values keep the preset's)."""
    values = {**preset_sections(preset).get("experiment", {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return replace(ExperimentConfig(), values)


def model_overrides(overrides: dict[str, dict[str, Any]] | None, model: str) -> dict[str, dict[str, Any]]:
    """One model's overrides from an experiment's: the model sections as they are, and
    "train" merged with "train_<model>" (e.g. {"train_ser": {"epochs": 10}})."""
    overrides = overrides or {}
    out = {k: dict(v) for k, v in overrides.items() if not k.startswith("train")}
    out["train"] = {**overrides.get("train", {}), **overrides.get(f"train_{model}", {})}
    return out
