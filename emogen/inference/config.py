"""The parameter objects of generation: how a diffusion checkpoint samples (SamplingOptions)
and what `emogen generate` / `emogen attention` take (GenerateConfig, AttentionConfig).

Each field declared with `option(...)` is also the command-line option of the same name
(emogen.options), so a flag's default and help live once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emogen.models.device import DEVICE_HELP, DEVICE_REQUESTS
from emogen.models.diffusion import SAMPLERS, DiffusionConfig
from emogen.models.vae import LATENT_SOURCES
from emogen.options import option
from emogen.tracking.registry import MODEL_URIS, TRACKING_URI_HELP

DEFAULT_HELP = "(default: the checkpoint's)"


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """How a diffusion checkpoint samples; None takes the checkpoint's default (its DiffusionConfig)."""

    sampler: str | None = option(None, f"diffusion sampler {DEFAULT_HELP}", choices=list(SAMPLERS))
    steps: int | None = option(None, f"denoising steps {DEFAULT_HELP}")
    guidance_scale: float | None = option(None, "classifier-free guidance (1 = none)")
    eta: float | None = None  # DDIM only (0 deterministic, 1 DDPM-like); the service's field, not a CLI option

    @property
    def sampling(self) -> SamplingOptions:
        """These fields alone (a command's config inherits them)."""
        return SamplingOptions(sampler=self.sampler, steps=self.steps, guidance_scale=self.guidance_scale, eta=self.eta)

    def with_defaults(self, config: DiffusionConfig) -> SamplingOptions:
        """Every None replaced by the checkpoint's value (steps=0 also takes the default)."""
        return SamplingOptions(
            sampler=self.sampler or config.sampler,
            steps=self.steps or config.num_inference_steps,
            guidance_scale=config.guidance_scale if self.guidance_scale is None else self.guidance_scale,
            eta=config.eta if self.eta is None else self.eta,
        )


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    """Which checkpoint a command loads, where an MLflow model URI resolves, and the device
    its models run on (emogen.models.device.choose_device decides it)."""

    checkpoint: str = option(help="a `emogen train diffusion|vae` run folder (its newest checkpoint), checkpoint folder "
                                  f"or state.pt, local or s3://..., or {MODEL_URIS}")
    tracking_uri: str | None = option(None, TRACKING_URI_HELP)
    device: str = option("auto", DEVICE_HELP, choices=list(DEVICE_REQUESTS))


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(SamplingOptions, CheckpointOptions):
    """`emogen generate`: WAVs of one emotion (or all six) from a diffusion or VAE checkpoint."""

    emotion: str = option("all", "one of the 6 emotions, or all")
    num_samples: int = option(4, "clips per emotion")
    seed: int = option(0, "random seed: the same seed gives the same clips")
    vae_latent: str = option(LATENT_SOURCES[0], "VAE: each emotion's fitted latent distribution (default) or N(0, I)",
                             choices=LATENT_SOURCES)
    out: Path = option(Path("runs/samples"), "folder for the WAVs")


@dataclass(frozen=True, kw_only=True)
class AttentionConfig(SamplingOptions, CheckpointOptions):
    """`emogen attention`: a PNG of the diffusion U-Net's self-attention while it generates one clip."""

    checkpoint: str = option(help="a `emogen train diffusion` run folder, checkpoint folder or state.pt, local or "
                                  f"s3://..., or {MODEL_URIS}")
    emotion: str = option(help="one of the 6 emotions")
    steps_to_capture: tuple[int, ...] | None = option(None, "0-based denoising step indices (default: first, middle, last)")
    seed: int = option(0, "random seed: the same seed gives the same clip")
    out: Path | None = option(None, "PNG path (default: runs/attention/EMOTION_SEED.png)")

    @property
    def png_path(self) -> Path:
        return self.out or Path("runs/attention") / f"{self.emotion}_{self.seed}.png"
