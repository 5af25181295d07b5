"""Generating emotional speech from a trained checkpoint (diffusion or VAE).

    generator = EmotionGenerator.from_checkpoint("runs/train/diffusion-demo/checkpoint_...")
    mels = generator.generate("fear", num_samples=8, steps=50, guidance_scale=2.0, seed=0)
    waves = generator.to_audio(mels)        # Griffin-Lim, 22,050 Hz

A diffusion checkpoint trained in latent space carries its VAE, so one file is a whole
generator. Used by the CLI, the experiment and the HTTP service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile as sf
import torch

from emogen.audio.mel import MelInverter
from emogen.config import EMOTION_TO_INDEX, EMOTIONS, AudioConfig, replace


def emotion_labels(emotions: str | Sequence[str], num_samples: int = 1) -> list[int]:
    """'fear' -> [4] * num_samples; a list of names -> their indices. Unknown names raise."""
    names = [emotions] * num_samples if isinstance(emotions, str) else list(emotions)
    unknown = [e for e in names if e not in EMOTION_TO_INDEX]
    if unknown:
        raise ValueError(f"unknown emotion {unknown[0]!r}; expected one of {', '.join(EMOTIONS)}")
    return [EMOTION_TO_INDEX[e] for e in names]


class EmotionGenerator:
    """A trained generator: model + (for diffusion) scheduler config + optional VAE decoder."""

    def __init__(self, state: dict, device: str | torch.device = "cpu", checkpoint: str | None = None):
        from emogen.checkpoint import build_configs, build_model, load_model
        from emogen.models.unet import UNet
        from emogen.models.vae import ConditionalVAE

        self.kind = state["model_name"]
        if self.kind not in ("diffusion", "vae"):
            raise ValueError(f"{checkpoint or 'checkpoint'} holds a {self.kind!r} model, not a generator (diffusion or vae)")
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.audio = replace(AudioConfig(), state.get("audio") or {})
        self.epoch = int(state.get("epoch", 0))
        self.registered: dict | None = None  # the MLflow model version it came from (from_checkpoint with a URI)
        self.vae: ConditionalVAE | None = None
        self.unet: UNet | None = None
        if self.kind == "vae":
            self.vae = load_model(state)
        else:
            self.diffusion = build_configs(state["configs"])["diffusion"]
            self.unet = load_model(state)
            extra = state.get("extra") or {}
            self.latent_scale = float(extra.get("latent_scale") or 1.0)
            if extra.get("vae"):
                self.vae = build_model("vae", {"vae": extra["vae"]["config"]}, extra["vae"]["model"])
        for module in (self.vae, self.unet):
            if module is not None:
                module.to(self.device).eval().requires_grad_(False)
        self._inverter: MelInverter | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        tracking_uri: str | None = None) -> "EmotionGenerator":
        """A checkpoint directory (or run directory), or an MLflow model URI (models:/NAME@ALIAS,
        models:/NAME/VERSION, runs:/RUN_ID/model) resolved at tracking_uri (emogen.tracking.registry)."""
        from emogen.checkpoint import load_state
        from emogen.tracking.registry import is_model_uri, resolve_model_uri

        if not is_model_uri(path):
            return cls(load_state(path), device=device, checkpoint=str(path))
        resolved = resolve_model_uri(str(path), tracking_uri)
        generator = cls(load_state(resolved.state_path), device=device, checkpoint=resolved.describe())
        generator.registered = {"uri": resolved.uri, "name": resolved.name, "version": resolved.version, "run_id": resolved.run_id}
        return generator

    @property
    def info(self) -> dict:
        info = {"model": self.kind, "checkpoint": self.checkpoint, "epoch": self.epoch, "emotions": list(EMOTIONS)}
        if self.registered:
            info["registered_model"] = self.registered
        if self.unet is not None:
            info.update(space=self.diffusion.space, num_train_timesteps=self.diffusion.num_train_timesteps,
                        default_sampler=self.diffusion.sampler, default_steps=self.diffusion.num_inference_steps,
                        default_guidance_scale=self.diffusion.guidance_scale)
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
        progress: Callable[[int, int], None] | None = None,
        vae_latent: str = "posterior",
    ) -> np.ndarray:
        """Scaled log-mels [N, n_mels, frames] for the requested emotion(s); seeded."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return self.generate_rows(emotion_labels(emotions, num_samples), generator, sampler, steps,
                                  guidance_scale, eta, progress=progress, vae_latent=vae_latent)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, T) of one row of noise: a VAE latent (VAE, latent diffusion) or a mel."""
        frames = self.audio.num_frames
        if self.vae is not None:
            return self.vae.latent_shape(frames)
        return (self.unet.config.in_channels, self.audio.n_mels, frames)

    @torch.no_grad()
    def generate_rows(
        self,
        labels: Sequence[int] | torch.Tensor,
        generator: torch.Generator | list[torch.Generator],
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
        chunk_rows: int | None = None,
        progress: Callable[[int, int], None] | None = None,
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
        from emogen.models.diffusion import in_chunks

        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device).reshape(-1)
        shape = (labels.shape[0], *self.sample_shape)
        if self.unet is None:
            from diffusers.utils.torch_utils import randn_tensor

            from emogen.models.vae import LATENT_SOURCES

            if vae_latent not in LATENT_SOURCES:
                raise ValueError(f"vae_latent must be one of {', '.join(LATENT_SOURCES)}, got {vae_latent!r}")
            latents = randn_tensor(shape, generator=generator, device=self.device)
            if vae_latent == "posterior":
                latents = self.vae.latents_from_noise(latents, labels)
        else:
            from emogen.models.diffusion import make_sampler, sample

            cfg = self.diffusion
            x = sample(
                self.unet, make_sampler(sampler or cfg.sampler, cfg), labels, shape,
                num_inference_steps=steps or cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale if guidance_scale is None else guidance_scale,
                eta=cfg.eta if eta is None else eta, generator=generator, model_chunk_rows=chunk_rows, progress=progress,
            )
            if self.vae is None:  # mel-space diffusion: the samples are the mels
                return x[:, 0].clamp(-1, 1).cpu().numpy()
            latents = x / self.latent_scale
        frames = self.audio.num_frames
        mels = in_chunks(lambda z, row_labels: self.vae.decode(z, row_labels, frames), chunk_rows, latents, labels)
        return mels[:, 0].clamp(-1, 1).cpu().numpy()

    def to_audio(self, mels: np.ndarray) -> np.ndarray:
        """Scaled log-mels -> waveforms [N, samples] at the audio config's rate (Griffin-Lim)."""
        if self._inverter is None:
            self._inverter = MelInverter(self.audio)
        return self._inverter(mels)


def write_wavs(waves: np.ndarray, out_dir: str | Path, names: Sequence[str], sample_rate: int) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for wave, name in zip(waves, names):
        path = out_dir / f"{name}.wav"
        sf.write(str(path), wave, sample_rate, subtype="PCM_16")
        paths.append(path)
    return paths
