"""Building blocks shared by the U-Net, the VAE and (partly) the SER network.

Reads top to bottom: frame padding helpers, small helpers, time embedding, residual
block, self-attention, resampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --- frame padding ------------------------------------------------------------------
# A 4-s clip has 173 frames, which no stride-2 stack divides. Every model pads the time
# axis up to a multiple of its total down-sampling factor on the way in and crops on the
# way out, here and nowhere else, so output shape == input shape for any clip length.


def pad_frames(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int]:
    """Right-pad the last (time) axis to a multiple of `multiple` by repeating the last
    frame; return (padded, original frames). Zeros would be a loud artificial column
    (a scaled log-mel's silence is -1): the VAE encoded it into a latent column that the
    diffusion U-Net's attention then fixed on (an attention sink at the clip's end)."""
    frames = x.shape[-1]
    extra = (-frames) % multiple
    if extra:
        x = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], extra)], dim=-1)
    return x, frames


def crop_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Undo pad_frames: keep the first `frames` time steps."""
    return x[..., :frames]


def check_height(height: int, multiple: int, what: str) -> None:
    # Only time is padded: the mel/latent height is fixed by the features, so a mismatch
    # is a configuration error, better reported than silently padded.
    if height % multiple:
        raise ValueError(f"{what}: input height {height} is not divisible by the down-sampling factor {multiple}")


# --- helpers ------------------------------------------------------------------------


def num_groups(channels: int, groups: int) -> int:
    """Largest group count <= `groups` that divides `channels` (GroupNorm needs one)."""
    return math.gcd(channels, groups) or 1


def norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels, groups), channels)


# --- time embedding -----------------------------------------------------------------


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of a (possibly fractional) timestep."""

    def __init__(self, dim: int, theta: float = 10_000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError("SinusoidalPosEmb dim must be even")
        self.dim = dim
        self.theta = theta

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(self.theta) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


# --- residual block -----------------------------------------------------------------


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, with an optional embedding (time and/or class).

    The embedding predicts a per-channel scale and shift after the second norm (FiLM, as
    in lucidrains' and the improved-DDPM U-Nets): a stronger conditioning signal than a
    plain added bias at the same cost.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int | None = None,
        dropout: float = 0.0,
        groups: int = 8,
    ) -> None:
        super().__init__()
        self.norm1 = norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels)) if emb_dim else None
        self.norm2 = norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None:
            if emb is None:
                raise ValueError("this ResidualBlock was built with an embedding; pass emb")
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


# --- self-attention -----------------------------------------------------------------


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all (height x time) positions, with a residual.

    For interpretation, set `store_attention = True` (or call `forward(x, return_attention=True)`):
    the weights [B, heads, HW, HW] of the last call are then kept in `last_attention`
    (detached). Otherwise the fused scaled_dot_product_attention kernel is used, which
    never materializes the weights and is faster.
    """

    def __init__(self, channels: int, heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"AttentionBlock: channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.norm = norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.store_attention = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k, v = (t.transpose(-1, -2) for t in (q, k, v))  # [B, heads, HW, d]
        want_weights = return_attention or self.store_attention
        if want_weights:
            attn = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
            out = attn @ v
            if self.store_attention:
                self.last_attention = attn.detach()
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(-1, -2).reshape(b, c, h, w)) + x
        return (out, attn) if return_attention else out


def set_store_attention(model: nn.Module, flag: bool = True) -> list[AttentionBlock]:
    """Switch attention-weight capture on/off for every AttentionBlock in `model`; return them."""
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    for block in blocks:
        block.store_attention = flag
        if not flag:
            block.last_attention = None
    return blocks


# --- resampling ---------------------------------------------------------------------


class Downsample(nn.Module):
    """Halve height and time with a strided conv (learned, unlike pooling)."""

    def __init__(self, in_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels or in_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv: avoids the checkerboard artefacts of transposed convs."""

    def __init__(self, in_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels or in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --- config helper ------------------------------------------------------------------


def freeze_sequences(cfg: object) -> None:
    """Turn list fields of a frozen config dataclass into tuples.

    Overrides arrive from JSON/YAML as lists; tuples keep configs hashable and make
    `cfg == cfg2` independent of where the values came from.
    """
    for name, value in vars(cfg).items():
        if isinstance(value, list):
            object.__setattr__(cfg, name, tuple(value))
