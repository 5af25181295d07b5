"""Emotion-conditioned convolutional VAE over scaled log-mels, with a spatial latent.

The seed used a flat latent of 32 numbers. We keep the latent SPATIAL instead
(latent_channels x n_mels/f x frames/f, e.g. 4 x 16 x 22 = 1408 values for f = 8 and a
173-frame clip padded to 176) because latent diffusion (AudioLDM / Stable Diffusion
style, the `demo` preset) runs the same convolutional U-Net on this latent: it needs a
small image, not a vector. The VAE alone can still generate a chosen emotion by decoding
prior noise with that emotion's label (`sample`).

Conditioning: a class embedding drives FiLM scale/shift in every residual block of both
encoder and decoder (layers.ResidualBlock), so the latent need not encode the emotion and
the decoder can render a requested one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Downsample, ResidualBlock, Upsample, check_height, crop_frames, freeze_sequences, norm, pad_frames


@dataclass(frozen=True)
class VAEConfig:
    """VAE hyperparameters (SPEC: residual conv VAE, beta 0.1, emotion-conditioned)."""

    in_channels: int = 1
    n_mels: int = 128
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4)  # one down-sampling per entry: f = 2**len
    num_res_blocks: int = 1
    latent_channels: int = 4
    num_classes: int = 6
    class_emb_dim: int = 64
    dropout: float = 0.0
    groups: int = 8
    output_activation: str = "tanh"  # "tanh" keeps outputs in the mels' [-1, 1]; or "none"
    beta: float = 0.1  # KL weight of vae_loss
    spectral_weight: float = 0.5
    recon_loss: str = "mse"  # or "l1"

    def __post_init__(self) -> None:
        freeze_sequences(self)
        if self.output_activation not in ("tanh", "none"):
            raise ValueError("VAEConfig.output_activation must be 'tanh' or 'none'")
        if self.recon_loss not in ("mse", "l1"):
            raise ValueError("VAEConfig.recon_loss must be 'mse' or 'l1'")

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.channel_mults)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        cur = widths[0]
        for width in widths:
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResidualBlock(cur, width, cfg.class_emb_dim, cfg.dropout, cfg.groups))
                cur = width
            self.blocks.append(Downsample(cur))
        self.mid = ResidualBlock(cur, cur, cfg.class_emb_dim, cfg.dropout, cfg.groups)
        self.out = nn.Sequential(norm(cur, cfg.groups), nn.SiLU(), nn.Conv2d(cur, 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for blk in self.blocks:
            h = blk(h, emb) if isinstance(blk, ResidualBlock) else blk(h)
        return self.out(self.mid(h, emb))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        cur = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, cur, 3, padding=1)
        self.mid = ResidualBlock(cur, cur, cfg.class_emb_dim, cfg.dropout, cfg.groups)
        self.blocks = nn.ModuleList()
        for width in reversed(widths):
            self.blocks.append(Upsample(cur))
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResidualBlock(cur, width, cfg.class_emb_dim, cfg.dropout, cfg.groups))
                cur = width
        self.out = nn.Sequential(norm(cur, cfg.groups), nn.SiLU(), nn.Conv2d(cur, cfg.in_channels, 3, padding=1))

    def forward(self, z: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z), emb)
        for blk in self.blocks:
            h = blk(h, emb) if isinstance(blk, ResidualBlock) else blk(h)
        return self.out(h)


class ConditionalVAE(nn.Module):
    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or VAEConfig()
        check_height(cfg.n_mels, cfg.downsample_factor, "VAE")
        # separate label embeddings: the encoder and decoder use the label differently
        self.enc_class_emb = nn.Embedding(cfg.num_classes, cfg.class_emb_dim)
        self.dec_class_emb = nn.Embedding(cfg.num_classes, cfg.class_emb_dim)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def latent_shape(self, frames: int) -> tuple[int, int, int]:
        """(C, H, T) of the latent for a clip of `frames` frames (T after padding)."""
        f = self.config.downsample_factor
        return (self.config.latent_channels, self.config.n_mels // f, math.ceil(frames / f))

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, n_mels, T] -> (mu, logvar), each [B, latent_channels, n_mels/f, ceil(T/f)]."""
        check_height(x.shape[-2], self.config.downsample_factor, "VAE")
        x, _ = pad_frames(x, self.config.downsample_factor)
        mu, logvar = self.encoder(x, self.enc_class_emb(labels.long())).chunk(2, dim=1)
        # bounds keep exp(logvar) finite early in training (as in Stable Diffusion's VAE)
        return mu, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else mu.device
        eps = torch.randn(mu.shape, generator=generator, device=gen_device, dtype=mu.dtype).to(mu.device)
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor, labels: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """z -> mel [B, 1, n_mels, frames]; frames=None keeps the padded length."""
        out = self.decoder(z, self.dec_class_emb(labels.long().to(z.device)))
        if self.config.output_activation == "tanh":
            out = torch.tanh(out)
        return crop_frames(out, frames) if frames is not None else out

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, labels)
        z = self.reparameterize(mu, logvar) if self.training else mu
        return self.decode(z, labels, frames=x.shape[-1]), mu, logvar

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, frames: int = 173, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode prior noise N(0, I) as the requested emotions: [len(labels), 1, n_mels, frames]."""
        device = next(self.parameters()).device
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
        shape = (labels.shape[0], *self.latent_shape(frames))
        gen_device = generator.device if generator is not None else device
        z = torch.randn(shape, generator=generator, device=gen_device).to(device)
        return self.decode(z, labels, frames)


# --- loss -----------------------------------------------------------------------------


def spectral_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Frequency and temporal structure: match local slopes along both axes and coarse
    (pooled) spectro-temporal envelopes, which per-pixel error alone under-weights."""
    d_freq = F.l1_loss(recon.diff(dim=-2), x.diff(dim=-2))
    d_time = F.l1_loss(recon.diff(dim=-1), x.diff(dim=-1))
    pooled = sum(F.l1_loss(F.avg_pool2d(recon, k, ceil_mode=True), F.avg_pool2d(x, k, ceil_mode=True)) for k in (2, 4, 8))
    return (d_freq + d_time) / 2 + pooled / 3


def vae_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = 0.1,
    spectral_weight: float = 0.5,
    kl_weight: float = 1.0,
    recon_type: str = "mse",
) -> dict[str, torch.Tensor]:
    """loss = recon + spectral_weight * spectral + kl_weight * beta * KL.

    KL is averaged per latent element (not summed), so beta means the same thing at any
    latent size; kl_weight in [0, 1] is the warm-up factor (ramp it up over the first
    epochs to avoid posterior collapse).
    """
    if recon.shape != x.shape:
        raise ValueError(f"vae_loss: recon shape {tuple(recon.shape)} != target shape {tuple(x.shape)}")
    rec = F.mse_loss(recon, x) if recon_type == "mse" else F.l1_loss(recon, x)
    spec = spectral_loss(recon, x)
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean()
    loss = rec + spectral_weight * spec + kl_weight * beta * kl
    return {"loss": loss, "recon": rec, "spectral": spec, "kl": kl}
