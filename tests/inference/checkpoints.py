"""Checkpoint states of untrained tiny generators, as training writes them: enough for
everything that does not depend on training (shapes, seeds, which pipeline, hooks)."""

from __future__ import annotations

import dataclasses

import torch

from emogen.checkpoint import build_model, plain
from emogen.presets import model_configs

AUDIO = {"n_mels": 32, "duration_s": 1.0}  # 44 frames
# attention at levels 2 and 3: two grid sizes, so shapes are checked per block
UNET = {"attention_levels": [2, 3]}


def diffusion_state() -> dict:
    """A checkpoint state of an untrained tiny mel-space diffusion model, as training writes one."""
    torch.manual_seed(0)
    cfgs = model_configs("tiny", {"unet": UNET})
    sections = {name: dataclasses.asdict(cfgs[name]) for name in ("unet", "diffusion")}
    model = build_model("diffusion", sections)
    return {"model_name": "diffusion", "model": model.state_dict(), "configs": plain(sections), "audio": AUDIO,
            "extra": {}}


def vae_state(audio: dict | None = None) -> dict:
    cfgs = model_configs("tiny")
    sections = {"vae": dataclasses.asdict(cfgs["vae"])}
    return {"model_name": "vae", "model": build_model("vae", sections).state_dict(), "configs": plain(sections),
            "audio": AUDIO if audio is None else audio, "extra": {}}


def latent_diffusion_state(latent_scale: float = 0.5) -> dict:
    """An untrained tiny latent-diffusion state carrying its (untrained) VAE, at the preset's
    clip length: the VAE's latent statistics are for its frames."""
    torch.manual_seed(0)
    vae = vae_state(audio={})
    channels = vae["configs"]["vae"]["latent_channels"]
    cfgs = model_configs("tiny", {"unet": {"in_channels": channels, "out_channels": channels},
                                  "diffusion": {"space": "latent"}})
    sections = {name: dataclasses.asdict(cfgs[name]) for name in ("unet", "diffusion")}
    return {"model_name": "diffusion", "model": build_model("diffusion", sections).state_dict(),
            "configs": plain(sections), "audio": {},
            "extra": {"latent_scale": latent_scale, "vae": {"config": vae["configs"]["vae"], "model": vae["model"]}}}


def ser_state() -> dict:
    """A checkpoint state of an untrained tiny SER classifier."""
    torch.manual_seed(0)
    sections = {"ser": dataclasses.asdict(model_configs("tiny")["ser"])}
    return {"model_name": "ser", "model": build_model("ser", sections).state_dict(), "configs": plain(sections),
            "audio": AUDIO, "extra": {}}
