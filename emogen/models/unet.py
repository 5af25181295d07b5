"""Emotion-conditioned U-Net noise predictor for mel-space or latent-space diffusion.

Time embedding: sinusoidal -> MLP. Emotion: a learned class embedding added to the time
embedding, with one extra "null" class (index num_classes) that stands for "no label";
training drops labels with probability `cond_drop_prob`, so the same network gives the
unconditional prediction needed for classifier-free guidance
(`forward_with_cond_scale`). Any frame count works: the time axis is padded to the
down-sampling factor with layers.pad_frames and the output cropped back.

Why our own module rather than diffusers' UNet2DModel(num_class_embeds=...): it is a
little faster at the demo size (UNet2DModel's up blocks hold one more resnet per level;
timings in benchmarks/README.md, "Demo preset choices"), and clarity decides: this file
reads top to bottom, takes any frame count (UNet2DModel needs sizes divisible by its
down-sampling factor), has the null class and guidance built in (UNet2DModel has neither)
and exposes attention weights for interpretation (diffusers hides them behind attention
processors). diffusers is still used for what it does best: the noise schedulers
(emogen.models.diffusion).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import (
    AttentionBlock,
    Downsample,
    ResidualBlock,
    SinusoidalPosEmb,
    Upsample,
    check_height,
    crop_frames,
    freeze_sequences,
    norm,
    pad_frames,
)


@dataclass(frozen=True)
class UNetConfig:
    """U-Net hyperparameters; defaults are the SPEC's mel-space ('paper') network."""

    in_channels: int = 1  # 1 for mels, the VAE's latent_channels for latent diffusion
    out_channels: int | None = None  # None: same as in_channels (noise has the input's shape)
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)  # one entry per resolution level
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2, 3)  # level indices (0 = full resolution)
    attention_heads: int = 4
    dropout: float = 0.0
    groups: int = 8
    num_classes: int = 6
    cond_drop_prob: float = 0.1  # classifier-free guidance: label dropout while training

    def __post_init__(self) -> None:
        freeze_sequences(self)
        bad = [i for i in self.attention_levels if not 0 <= i < len(self.channel_mults)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside 0..{len(self.channel_mults) - 1}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or UNetConfig()
        ch = cfg.base_channels
        emb_dim = 4 * ch
        widths = [ch * m for m in cfg.channel_mults]
        last = len(widths) - 1

        def block(cin: int, cout: int) -> ResidualBlock:
            return ResidualBlock(cin, cout, emb_dim, cfg.dropout, cfg.groups)

        def attn(level: int, width: int) -> nn.Module:
            return AttentionBlock(width, cfg.attention_heads, cfg.groups) if level in cfg.attention_levels else nn.Identity()

        self.time_mlp = nn.Sequential(SinusoidalPosEmb(ch), nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # num_classes + 1 rows: the last one is the learned "null" (unconditional) class
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim)
        self.init_conv = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        self.downs = nn.ModuleList()
        skip_widths = []
        cur = ch
        for level, width in enumerate(widths):
            stage = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.append(nn.ModuleList([block(cur, width), attn(level, width)]))
                cur = width
                skip_widths.append(cur)
            self.downs.append(nn.ModuleList([stage, Downsample(cur) if level < last else nn.Identity()]))

        self.mid1 = block(cur, cur)
        self.mid_attn = AttentionBlock(cur, cfg.attention_heads, cfg.groups)
        self.mid2 = block(cur, cur)

        self.ups = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            stage = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.append(nn.ModuleList([block(cur + skip_widths.pop(), width), attn(level, width)]))
                cur = width
            self.ups.append(nn.ModuleList([stage, Upsample(cur) if level > 0 else nn.Identity()]))

        self.final = nn.Sequential(norm(cur, cfg.groups), nn.SiLU(), nn.Conv2d(cur, cfg.out_channels or cfg.in_channels, 3, padding=1))

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int,
        labels: torch.Tensor | None,
        cond_drop_prob: float | None = None,
    ) -> torch.Tensor:
        """Predict noise for x [B, C, H, T] at timesteps t ([B] or scalar) given labels [B].

        cond_drop_prob: probability of replacing each label by the null class; None means
        the config's value in training mode and 0 in eval mode. labels=None is fully
        unconditional.
        """
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if cond_drop_prob is None:
            cond_drop_prob = self.config.cond_drop_prob if self.training else 0.0
        if labels is None:
            labels = torch.full((b,), self.null_class, device=x.device, dtype=torch.long)
        else:
            labels = labels.to(device=x.device, dtype=torch.long)
            if cond_drop_prob > 0:
                drop = torch.rand(b, device=x.device) < cond_drop_prob
                labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        emb = self.time_mlp(t) + self.class_emb(labels)

        check_height(x.shape[-2], self.config.downsample_factor, "UNet")
        x, frames = pad_frames(x, self.config.downsample_factor)
        h = self.init_conv(x)
        skips = []
        for stage, down in self.downs:
            for res, att in stage:
                h = att(res(h, emb))
                skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for stage, up in self.ups:
            for res, att in stage:
                h = att(res(torch.cat((h, skips.pop()), dim=1), emb))
            h = up(h)
        return crop_frames(self.final(h), frames)

    def forward_with_cond_scale(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int,
        labels: torch.Tensor | None,
        cond_scale: float = 1.0,
    ) -> torch.Tensor:
        """Classifier-free guidance: uncond + cond_scale * (cond - uncond).

        cond_scale 1 is the plain conditional prediction and skips the second pass.
        """
        cond = self.forward(x, t, labels, cond_drop_prob=0.0)
        if cond_scale == 1.0 or labels is None:
            return cond
        uncond = self.forward(x, t, labels, cond_drop_prob=1.0)
        return uncond + cond_scale * (cond - uncond)
