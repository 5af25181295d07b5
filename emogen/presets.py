"""Size presets, as data.

A preset is a dict of sections, each a plain dict of overrides for one config dataclass
(the dataclass defaults are the SPEC's values). Add a section (e.g. "train_ser": {...})
to a preset and, if it has a config dataclass, register that in CONFIG_CLASSES;
`model_configs` builds only the model sections and leaves other sections to their
owners (read them with `preset_sections`).

- tiny:  unit tests; every forward pass is fast on CPU.
- demo:  a laptop CPU; diffusion runs in the VAE's latent space because a mel-space
         U-Net step is too slow there (the SPEC's timing).
- paper: a GPU cluster; mel-space diffusion as in the seed (4 levels, attention at the
         two lowest), ResNet-18-layout SER.

Why each demo value is what it is, with the runs that chose it: benchmarks/README.md,
"Demo preset choices".
"""

from __future__ import annotations

import copy
from typing import Any

from emogen.config import replace
from emogen.models.diffusion import DiffusionConfig
from emogen.models.ser import SERConfig
from emogen.models.unet import UNetConfig
from emogen.models.vae import VAEConfig

CONFIG_CLASSES: dict[str, type] = {
    "unet": UNetConfig,
    "vae": VAEConfig,
    "ser": SERConfig,
    "diffusion": DiffusionConfig,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "unet": {"base_channels": 8, "channel_mults": (1, 1, 2, 2), "attention_levels": (3,), "attention_heads": 2},
        "vae": {"base_channels": 8, "channel_mults": (1, 2, 4), "latent_channels": 4, "class_emb_dim": 16,
                "latent_components": 2},
        "ser": {"widths": (8, 16), "blocks_per_stage": (1, 1)},
        "diffusion": {"space": "mel", "sampler": "ddim", "num_inference_steps": 5},
        "train": {"epochs": 2, "batch_size": 16},
        "experiment": {"folds": 2, "seeds": (0,), "per_emotion": 3, "wavs_per_emotion": 1},
    },
    "demo": {
        # Latent diffusion on a VAE latent 4x down per axis: a smaller (8x-down) latent
        # loses the emotion cues. in_channels must equal vae.latent_channels.
        "unet": {"in_channels": 4, "base_channels": 32, "channel_mults": (1, 2, 2), "attention_levels": (2,)},
        # The SPEC's KL weight (0.1): a smoother latent than 0.001's that diffuses as well,
        # keeps real speech's pauses, and gives VAE samples nearer real ones. 16 principal
        # directions per emotion: samples whose latent positions move together as real clips' do.
        "vae": {"base_channels": 8, "channel_mults": (1, 2), "latent_channels": 4, "class_emb_dim": 32,
                "latent_components": 16},
        # stem stride 4: a quarter of stride 2's cost per epoch at the same held-out UA;
        # an experiment trains many SERs, so their epochs are the bulk of its time.
        # Statistics pooling and per-band input normalization: what lets the SER beat a
        # linear probe on mel statistics (benchmarks/ser_vs_probe.py).
        "ser": {"widths": (16, 32, 64, 128), "blocks_per_stage": (2, 2, 2, 2), "stem_stride": 4,
                "pooling": "stats", "input_norm": True},
        # min-SNR-5 weighting: clearer judged emotions and pauses closer to real speech's
        # (benchmarks/README.md, "Latent diffusion recipes").
        "diffusion": {"space": "latent", "sampler": "ddim", "num_inference_steps": 10, "guidance_scale": 4.0,
                      "snr_gamma": 5.0},
        # Epochs sized by each model's CPU cost per epoch, to fit the demo's time budget
        # (the matched-steps control measures what more SER steps would be worth). The
        # SER's input augmentation (shift, roll, SpecAugment) raises held-out UA. No early
        # stopping for the SER: its best validation loss comes late, and the small
        # validation set makes a patience stop at a noise spike likely. A higher LR decayed
        # by a cosine over more epochs is what takes it past the probe; mixup did not help.
        "train_ser": {"epochs": 45, "lr": 1e-3, "lr_schedule": "cosine", "early_stopping_patience": 0,
                      "label_smoothing": 0.1, "freq_shift": 4, "time_roll": True, "spec_masks": 2},
        # 20 epochs: more clarity per second of training than 10 (benchmarks/README.md, "VAE: 20 epochs ...")
        "train_vae": {"epochs": 20, "lr": 1e-3, "kl_warmup_epochs": 3, "early_stopping_patience": 4},
        # Optimizer steps are the first lever of sample quality, so the diffusion U-Net gets
        # the most epochs, with the weights averaged for sampling at a constant LR (a plateau
        # schedule stopped gaining early). A half-width U-Net trained as long was worse.
        "train_diffusion": {"epochs": 150, "lr": 1e-3, "lr_schedule": "constant", "ema_decay": 0.999},
        # emogen.experiment.run.ExperimentConfig: 3 seeds, as many generated clips as real ones
        # of which those the seed's real-trained SER gives >= 0.4 for their emotion are kept
        # (filtering raises the augmentation's UA gain), the generators on both cores of a laptop.
        "experiment": {"folds": 3, "seeds": (0, 1, 2), "ratio": 1.0, "min_confidence": 0.4, "cpus_per_worker": 2},
    },
    "paper": {
        "unet": {"in_channels": 1, "base_channels": 32, "channel_mults": (1, 2, 4, 4), "attention_levels": (2, 3)},
        "vae": {"base_channels": 32, "channel_mults": (1, 2, 4), "latent_channels": 4},
        "ser": {"widths": (32, 64, 128, 256), "blocks_per_stage": (2, 2, 2, 2), "pooling": "stats", "input_norm": True},
        "diffusion": {"space": "mel", "sampler": "ddpm", "num_inference_steps": 1000, "snr_gamma": 5.0},
        # the demo's SER schedule (a cosine runs its course: no early stopping)
        "train_ser": {"epochs": 60, "lr": 1e-3, "lr_schedule": "cosine", "early_stopping_patience": 0,
                      "label_smoothing": 0.1, "freq_shift": 4, "time_roll": True, "spec_masks": 2},
        "train_vae": {"epochs": 100, "kl_warmup_epochs": 10, "early_stopping_patience": 10},
        # the demo's recipe: weight average at a constant LR (benchmarks/README.md)
        "train_diffusion": {"epochs": 300, "lr_schedule": "constant", "ema_decay": 0.999},
        "experiment": {"folds": 5, "seeds": (0, 1, 2, 3, 4), "ratio": 1.0},
    },
}


def preset_sections(preset: str) -> dict[str, dict[str, Any]]:
    """A deep copy of a preset's sections (safe to modify)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[preset])


def model_configs(preset: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Config dataclasses {"unet", "vae", "ser", "diffusion"} of a preset, with overrides.

    overrides has the same shape as a preset ({"unet": {"base_channels": 64}, ...});
    sections not in CONFIG_CLASSES (e.g. training sections) are accepted and ignored
    here, unknown fields inside a model section raise ValueError.
    """
    sections = preset_sections(preset)
    overrides = overrides or {}
    bad = [k for k, v in overrides.items() if not isinstance(v, dict)]
    if bad:
        raise ValueError(f"overrides must be sections of field overrides; not a dict: {', '.join(bad)}")
    configs = {
        name: replace(cls(), {**sections.get(name, {}), **overrides.get(name, {})})
        for name, cls in CONFIG_CLASSES.items()
    }
    if configs["diffusion"].space == "latent" and configs["unet"].in_channels != configs["vae"].latent_channels:
        raise ValueError(
            f"latent diffusion needs unet.in_channels ({configs['unet'].in_channels}) == vae.latent_channels ({configs['vae'].latent_channels})"
        )
    return configs
