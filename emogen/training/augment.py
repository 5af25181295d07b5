"""SER input augmentation on batches of scaled log-mels: frequency shift, time roll,
SpecAugment masks. Training batches only; the settings are TrainConfig fields."""

from __future__ import annotations

import torch

from emogen.training.config import TrainConfig


def augment_mels(mel: torch.Tensor, cfg: TrainConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """A training batch of scaled log-mels [B, n_mels, frames] with random, per-clip
    frequency shift (edge-padded), time roll and SpecAugment masks (filled with the clip's
    minimum, i.e. silence). The SER overfits a few training speakers without them."""
    batch, n_mels, frames = mel.shape
    device = mel.device

    def randint(high: torch.Tensor | int, size: tuple[int, ...]) -> torch.Tensor:
        u = torch.rand(size, generator=generator, device="cpu").to(device)
        return (u * high).long()

    if cfg.freq_shift > 0:
        shift = randint(2 * cfg.freq_shift + 1, (batch, 1)) - cfg.freq_shift
        index = (torch.arange(n_mels, device=device)[None] - shift).clamp(0, n_mels - 1)
        mel = mel.gather(1, index[:, :, None].expand(batch, n_mels, frames))
    if cfg.time_roll:
        roll = randint(frames, (batch, 1))
        index = (torch.arange(frames, device=device)[None] - roll) % frames
        mel = mel.gather(2, index[:, None, :].expand(batch, n_mels, frames))
    if cfg.spec_masks > 0:
        floor = mel.amin(dim=(1, 2), keepdim=True)
        for axis, size, width in ((1, n_mels, cfg.freq_mask_width), (2, frames, cfg.time_mask_width)):
            positions = torch.arange(size, device=device)[None]
            for _ in range(cfg.spec_masks):
                w = randint(min(width, size) + 1, (batch, 1))
                start = (torch.rand((batch, 1), generator=generator).to(device) * (size - w + 1)).long()
                hit = (positions >= start) & (positions < start + w)  # [B, size]
                hit = hit[:, :, None] if axis == 1 else hit[:, None, :]
                mel = torch.where(hit, floor, mel)
    return mel
