"""The networks, as plain torch.nn.Modules with one config dataclass each."""

from torch import nn

from .layers import AttentionBlock, crop_frames, pad_frames, set_store_attention
from .ser import ResNetSER, SERConfig
from .unet import UNet, UNetConfig
from .vae import ConditionalVAE, VAEConfig, spectral_loss, vae_loss


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "AttentionBlock",
    "ConditionalVAE",
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
