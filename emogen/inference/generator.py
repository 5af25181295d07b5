"""Generating emotional speech from a trained checkpoint (diffusion or VAE).

    generator = EmotionGenerator.from_checkpoint("runs/train/diffusion-demo/checkpoint_...")
    mels = generator.generate("fear", num_samples=8, steps=50, guidance_scale=2.0, seed=0)
    waves = generator.to_audio(mels)        # Griffin-Lim, 22,050 Hz

As in diffusers, the networks, the scheduler and the pipeline that runs them are separate
small objects: `VAEPipeline` (decoder sampling), `MelDiffusionPipeline` (U-Net + scheduler
on mels) and `LatentDiffusionPipeline` (U-Net + scheduler on VAE latents, then the VAE
decoder). `EmotionGenerator` picks one from the checkpoint's state and keeps the one call
the CLI, the experiment and the HTTP service use. A latent-diffusion checkpoint carries
its VAE, so one file is a whole generator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import soundfile as sf
import torch
from diffusers.utils.torch_utils import randn_tensor

from emogen.audio.mel import MelInverter
from emogen.checkpoint import build_configs, build_model, load_model, load_state
from emogen.config import EMOTION_TO_INDEX, EMOTIONS, AudioConfig, replace
from emogen.inference.config import SamplingOptions
from emogen.models.diffusion import DiffusionConfig, in_chunks, make_sampler, sample
from emogen.models.unet import UNet
from emogen.models.vae import LATENT_SOURCES, ConditionalVAE
from emogen.tracking.registry import resolve_checkpoint_ref

RowGenerators = Union[torch.Generator, list[torch.Generator]]  # one for all rows, or one per row
Progress = Callable[[int, int], None]


def emotion_labels(emotions: str | Sequence[str], num_samples: int = 1) -> list[int]:
    """'fear' -> [4] * num_samples; a list of names -> their indices. Unknown names raise."""
    names = [emotions] * num_samples if isinstance(emotions, str) else list(emotions)
    unknown = [e for e in names if e not in EMOTION_TO_INDEX]
    if unknown:
        raise ValueError(f"unknown emotion {unknown[0]!r}; expected one of {', '.join(EMOTIONS)}")
    return [EMOTION_TO_INDEX[e] for e in names]


# ------------------------------------------------------------------- pipelines
# Each returns mels [N, 1, n_mels, frames] (unclamped) for labels [N] on the model's device.


@dataclass(frozen=True, eq=False)
class VAEPipeline:
    """Decoder sampling: latents from each emotion's fitted distribution ("posterior") or
    N(0, I) ("prior"), decoded to mels."""

    vae: ConditionalVAE
    frames: int

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.vae.latent_shape(self.frames)

    def decode(self, latents: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
        return in_chunks(lambda z, row_labels: self.vae.decode(z, row_labels, self.frames), chunk_rows, latents, labels)

    def __call__(self, labels: torch.Tensor, generator: RowGenerators, chunk_rows: int | None = None,
                 vae_latent: str = "posterior") -> torch.Tensor:
        if vae_latent not in LATENT_SOURCES:
            raise ValueError(f"vae_latent must be one of {', '.join(LATENT_SOURCES)}, got {vae_latent!r}")
        latents = randn_tensor((labels.shape[0], *self.sample_shape), generator=generator, device=labels.device)
        if vae_latent == "posterior":
            latents = self.vae.latents_from_noise(latents, labels)
        return self.decode(latents, labels, chunk_rows)


@dataclass(frozen=True, eq=False)
class DiffusionPipeline:
    """The U-Net run backwards through a fresh scheduler (`emogen.models.diffusion.sample`)
    from seeded noise of `sample_shape` (the subclass's: a mel or a VAE latent)."""

    unet: UNet
    config: DiffusionConfig

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def denoise(self, labels: torch.Tensor, generator: RowGenerators, options: SamplingOptions,
                chunk_rows: int | None = None, progress: Progress | None = None) -> torch.Tensor:
        """Samples [N, *sample_shape] for `options` (None fields: the checkpoint's)."""
        options = options.with_defaults(self.config)
        return sample(self.unet, make_sampler(options.sampler, self.config), labels, (labels.shape[0], *self.sample_shape),
                      num_inference_steps=options.steps, guidance_scale=options.guidance_scale, eta=options.eta,
                      generator=generator, model_chunk_rows=chunk_rows, progress=progress)


@dataclass(frozen=True, eq=False)
class MelDiffusionPipeline(DiffusionPipeline):
    """Diffusion on scaled log-mels: the samples are the mels."""

    n_mels: int
    frames: int

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.unet.config.in_channels, self.n_mels, self.frames)

    def __call__(self, labels: torch.Tensor, generator: RowGenerators, options: SamplingOptions,
                 chunk_rows: int | None = None, progress: Progress | None = None) -> torch.Tensor:
        return self.denoise(labels, generator, options, chunk_rows, progress)


@dataclass(frozen=True, eq=False)
class LatentDiffusionPipeline(DiffusionPipeline):
    """Diffusion on the VAE's latents (multiplied by latent_scale in training), then the VAE decoder."""

    decoder: VAEPipeline
    latent_scale: float = 1.0

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.decoder.sample_shape

    def __call__(self, labels: torch.Tensor, generator: RowGenerators, options: SamplingOptions,
                 chunk_rows: int | None = None, progress: Progress | None = None) -> torch.Tensor:
        latents = self.denoise(labels, generator, options, chunk_rows, progress) / self.latent_scale
        return self.decoder.decode(latents, labels, chunk_rows)


Pipeline = Union[VAEPipeline, MelDiffusionPipeline, LatentDiffusionPipeline]


def _frozen(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return module.to(device).eval().requires_grad_(False)


def pipeline_from_state(state: dict, audio: AudioConfig, device: torch.device) -> Pipeline:
    """The pipeline a generator checkpoint holds: a VAE, or a U-Net with its diffusion config
    (and, trained in latent space, the VAE it carries in state["extra"])."""
    if state["model_name"] == "vae":
        return VAEPipeline(_frozen(load_model(state), device), audio.num_frames)
    config = build_configs(state["configs"])["diffusion"]
    unet = _frozen(load_model(state), device)
    extra = state.get("extra") or {}
    if not extra.get("vae"):
        return MelDiffusionPipeline(unet, config, audio.n_mels, audio.num_frames)
    vae = build_model("vae", {"vae": extra["vae"]["config"]}, extra["vae"]["model"])
    return LatentDiffusionPipeline(unet, config, VAEPipeline(_frozen(vae, device), audio.num_frames),
                                   latent_scale=float(extra.get("latent_scale") or 1.0))


# ------------------------------------------------------------------- generator


class EmotionGenerator:
    """A trained generator: the pipeline its checkpoint holds, behind one seeded call."""

    def __init__(self, state: dict, device: str | torch.device = "cpu", checkpoint: str | None = None):
        self.kind = state["model_name"]
        if self.kind not in ("diffusion", "vae"):
            raise ValueError(f"{checkpoint or 'checkpoint'} holds a {self.kind!r} model, not a generator (diffusion or vae)")
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.audio = replace(AudioConfig(), state.get("audio") or {})
        self.epoch = int(state.get("epoch", 0))
        self.registered: dict | None = None  # the MLflow model version it came from (from_checkpoint with a URI)
        self.pipeline: Pipeline = pipeline_from_state(state, self.audio, self.device)
        self._inverter: MelInverter | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        tracking_uri: str | None = None) -> "EmotionGenerator":
        """A state.pt, checkpoint folder or run folder (its newest checkpoint), local or on object
        storage (s3://...: fetched into this node's cache), or an MLflow model URI
        (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model) resolved at tracking_uri
        (emogen.tracking.registry.resolve_checkpoint_ref)."""
        resolved = resolve_checkpoint_ref(path, tracking_uri)
        generator = cls(load_state(resolved.state_path), device=device, checkpoint=resolved.describe())
        generator.registered = resolved.registered()
        return generator

    # The networks and the diffusion config, for callers that look inside (attention
    # capture, the service's request defaults, benchmarks).

    @property
    def unet(self) -> UNet | None:
        return self.pipeline.unet if isinstance(self.pipeline, DiffusionPipeline) else None

    @property
    def diffusion(self) -> DiffusionConfig:
        if not isinstance(self.pipeline, DiffusionPipeline):
            raise AttributeError("a VAE checkpoint has no diffusion config")
        return self.pipeline.config

    @property
    def vae(self) -> ConditionalVAE | None:
        decoder = self.pipeline.decoder if isinstance(self.pipeline, LatentDiffusionPipeline) else self.pipeline
        return decoder.vae if isinstance(decoder, VAEPipeline) else None

    @vae.setter
    def vae(self, vae: ConditionalVAE) -> None:
        """Swap the VAE (e.g. a variant of the same weights) in a new pipeline: a copy of this
        generator (copy.copy) that swaps it leaves the original's pipeline alone."""
        if isinstance(self.pipeline, VAEPipeline):
            self.pipeline = dataclasses.replace(self.pipeline, vae=vae)
        elif isinstance(self.pipeline, LatentDiffusionPipeline):
            self.pipeline = dataclasses.replace(self.pipeline, decoder=dataclasses.replace(self.pipeline.decoder, vae=vae))
        else:
            raise AttributeError("a mel-space diffusion checkpoint has no VAE")

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, T) of one row of noise: a VAE latent (VAE, latent diffusion) or a mel."""
        return self.pipeline.sample_shape

    @property
    def info(self) -> dict:
        info = {"model": self.kind, "checkpoint": self.checkpoint, "epoch": self.epoch, "emotions": list(EMOTIONS)}
        if self.registered:
            info["registered_model"] = self.registered
        if self.unet is not None:
            cfg = self.diffusion
            info.update(space=cfg.space, num_train_timesteps=cfg.num_train_timesteps, default_sampler=cfg.sampler,
                        default_steps=cfg.num_inference_steps, default_guidance_scale=cfg.guidance_scale)
        return info

    @torch.no_grad()
    def generate(
        self,
        emotions: str | Sequence[str],
        num_samples: int = 1,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
        seed: int = 0,
        progress: Progress | None = None,
        vae_latent: str = "posterior",
    ) -> np.ndarray:
        """Scaled log-mels [N, n_mels, frames] for the requested emotion(s); seeded."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return self.generate_rows(emotion_labels(emotions, num_samples), generator, sampler, steps,
                                  guidance_scale, eta, progress=progress, vae_latent=vae_latent)

    @torch.no_grad()
    def generate_rows(
        self,
        labels: Sequence[int] | torch.Tensor,
        generator: RowGenerators,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
        chunk_rows: int | None = None,
        progress: Progress | None = None,
        vae_latent: str = "posterior",
    ) -> np.ndarray:
        """Scaled log-mels [len(labels), n_mels, frames], one row per emotion index.

        generator: one for all rows, or a list with one per row (each row's noise then
        comes from its own generator only). chunk_rows: run every model call (U-Net step,
        VAE decode) on fixed chunks of that many rows (`emogen.models.diffusion.in_chunks`), so a
        row's numbers do not depend on the rows beside it. Sampling options default to
        the checkpoint's and are ignored by a VAE, which decodes latents drawn from each
        emotion's fitted distribution (vae_latent "posterior") or from N(0, I) ("prior");
        diffusion ignores vae_latent.
        """
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device).reshape(-1)
        if isinstance(self.pipeline, VAEPipeline):
            mels = self.pipeline(labels, generator, chunk_rows, vae_latent=vae_latent)
        else:
            options = SamplingOptions(sampler=sampler, steps=steps, guidance_scale=guidance_scale, eta=eta)
            mels = self.pipeline(labels, generator, options, chunk_rows, progress)
        return mels[:, 0].clamp(-1, 1).cpu().numpy()

    def to_audio(self, mels: np.ndarray) -> np.ndarray:
        """Scaled log-mels -> waveforms [N, samples] at the audio config's rate (Griffin-Lim)."""
        if self._inverter is None:
            self._inverter = MelInverter(self.audio)
        return self._inverter(mels)


def write_wavs(waves: np.ndarray, out_dir: str | Path, names: Sequence[str], sample_rate: int) -> list[Path]:
    """One 16-bit WAV per wave, named <name>.wav in out_dir (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for wave, name in zip(waves, names):
        path = out_dir / f"{name}.wav"
        sf.write(str(path), wave, sample_rate, subtype="PCM_16")
        paths.append(path)
    return paths
