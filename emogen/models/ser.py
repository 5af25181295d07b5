"""ResNet speech-emotion recognizer over scaled log-mels (SPEC: 6 classes).

Global average pooling makes it independent of the clip length. `embed` returns the
penultimate features that FID is computed on; `forward` = classifier head on `embed`.
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

    def __post_init__(self) -> None:
        freeze_sequences(self)
        if len(self.widths) != len(self.blocks_per_stage):
            raise ValueError("SERConfig.widths and blocks_per_stage must have the same length")

    @property
    def embed_dim(self) -> int:
        return self.widths[-1]


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
        self.head = nn.Linear(cur, cfg.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, embed_dim] (globally pooled, before dropout)."""
        return self.stages(self.stem(x)).mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes]."""
        return self.head(self.dropout(self.embed(x)))
