"""The networks, as plain torch.nn.Modules with one config dataclass each, and the
registry of trainable networks by model name (what a checkpoint needs to rebuild one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .layers import AttentionBlock, crop_frames, pad_frames, set_store_attention
from .ser import ResNetSER, SERConfig
from .unet import UNet, UNetConfig
from .vae import ConditionalVAE, VAEConfig, spectral_loss, vae_loss


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class NetworkSpec:
    """A trainable network and the config sections it is built from and saved with
    (its own section first)."""

    network: type[nn.Module]
    sections: tuple[str, ...]

    def build(self, configs: dict[str, Any]) -> nn.Module:
        """The untrained network from config dataclasses keyed by section, its conv
        weights channels-last: oneDNN's convolutions then run without layout conversions
        (on CUDA it is the layout tensor cores want; the speed-up is in benchmarks/README.md,
        "Training throughput")."""
        return self.network(configs[self.sections[0]]).to(memory_format=torch.channels_last)


# Model names are defined here once; emogen.training pairs each with its training task.
NETWORKS: dict[str, NetworkSpec] = {
    "ser": NetworkSpec(ResNetSER, ("ser",)),
    "vae": NetworkSpec(ConditionalVAE, ("vae",)),
    "diffusion": NetworkSpec(UNet, ("unet", "diffusion")),
}


__all__ = [
    "AttentionBlock",
    "ConditionalVAE",
    "NETWORKS",
    "NetworkSpec",
    "ResNetSER",
    "SERConfig",
    "UNet",
    "UNetConfig",
    "VAEConfig",
    "count_parameters",
    "crop_frames",
    "pad_frames",
    "set_store_attention",
    "spectral_loss",
    "vae_loss",
]
