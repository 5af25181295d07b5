"""ResNet speech-emotion recognizer over scaled log-mels (SPEC: 6 classes).

Pooling over time makes it independent of the clip length: "mean" averages the last
feature map; "stats" averages it over frequency and keeps the mean and standard deviation
over time (x-vector / ECAPA statistics pooling), since in emotional speech the variation
over time is the prosody. With `input_norm`, each mel band is standardized by the
training split's mean and std, held as buffers so every checkpoint carries them.
`embed` returns the penultimate features that FID is computed on; `forward` = classifier
head on `embed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import freeze_sequences


@dataclass(frozen=True)
class SERConfig:
    in_channels: int = 1
    num_classes: int = 6
    widths: tuple[int, ...] = (32, 64, 128, 256)  # one stage per width (ResNet-18 layout)
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2)
    stem_stride: int = 2  # 128x173 mels are large: halve them before the first stage
    dropout: float = 0.3
    pooling: str = "mean"  # "mean" | "stats" (mean and std over time)
    input_norm: bool = False  # per-mel-band standardization (set_input_stats)
    n_mels: int = 128  # size of the input_norm buffers

    def __post_init__(self) -> None:
        freeze_sequences(self)
        if len(self.widths) != len(self.blocks_per_stage):
            raise ValueError("SERConfig.widths and blocks_per_stage must have the same length")
        if self.pooling not in POOLINGS:
            raise ValueError(f"SERConfig.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")

    @property
    def embed_dim(self) -> int:
        return self.widths[-1] * (2 if self.pooling == "stats" else 1)


POOLINGS = ("mean", "stats")


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers with an identity (or 1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNetSER(nn.Module):
    def __init__(self, config: SERConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or SERConfig()
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.widths[0], 3, stride=cfg.stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(cfg.widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        cur = cfg.widths[0]
        for i, (width, n) in enumerate(zip(cfg.widths, cfg.blocks_per_stage)):
            blocks = [BasicBlock(cur, width, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cur = width
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        if cfg.input_norm:
            # identity until set_input_stats; buffers, so state_dict saves and restores them
            self.register_buffer("input_mean", torch.zeros(cfg.n_mels))
            self.register_buffer("input_std", torch.ones(cfg.n_mels))

    @torch.no_grad()
    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-mel-band mean and std [n_mels] of the training mels (input_norm only)."""
        if not self.config.input_norm:
            raise ValueError("set_input_stats needs SERConfig.input_norm=True")
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-3))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, n_mels, T] standardized per band (unchanged without input_norm)."""
        if not self.config.input_norm:
            return x
        return (x - self.input_mean[:, None]) / self.input_std[:, None]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, embed_dim] (pooled, before dropout)."""
        h = self.stages(self.stem(self.normalize(x)))
        if self.config.pooling == "mean":
            return h.mean(dim=(-2, -1))
        h = h.mean(dim=-2)  # [B, C, T']
        # eps: a ReLU channel that is zero all clip long has a std whose gradient is infinite
        std = (h.var(dim=-1, unbiased=False) + 1e-5).sqrt()
        return torch.cat([h.mean(dim=-1), std], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes]."""
        return self.head(self.dropout(self.embed(x)))
