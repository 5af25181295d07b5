"""Emotion-conditioned convolutional VAE over scaled log-mels, with a spatial latent.

The seed used a flat latent of 32 numbers. We keep the latent SPATIAL instead
(latent_channels x n_mels/f x frames/f, e.g. 4 x 16 x 22 = 1408 values for f = 8 and a
173-frame clip padded to 176) because latent diffusion (AudioLDM / Stable Diffusion
style, the `demo` preset) runs the same convolutional U-Net on this latent: it needs a
small image, not a vector. The VAE alone generates a chosen emotion by decoding a latent
with that emotion's label (`sample`): drawn from the emotion's fitted latent distribution
(default) or from the prior N(0, I).

Why not the prior: with a small KL weight (the demo's beta) the encoder's posteriors sit
far from N(0, I), so prior draws land where no training clip's latent lies and decode to
textures. Ex-post density estimation (Ghosh et al. 2020, "From Variational to
Deterministic Autoencoders") fits a density to the encoder means instead: here, per
emotion, a Gaussian with a mean and a standard deviation per latent element, from the
encoder means of that emotion's training clips, kept as buffers (so in every checkpoint,
beside the weights they belong to). A per-element Gaussian ignores how latent positions
move together (an utterance's onset with the pause after it), so with
`latent_components` K > 0 each emotion's Gaussian also gets its top K principal
directions (probabilistic PCA: mean + K directions with their spreads + a per-element
residual). Training fills the buffers (`LatentStatistics` over each epoch's training
pass, then `fit_latent_distribution`).

Conditioning: a class embedding drives FiLM scale/shift in every residual block of both
encoder and decoder (layers.ResidualBlock), so the latent need not encode the emotion and
the decoder can render a requested one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from emogen.config import AudioConfig

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
    # principal directions per emotion in the fitted latent distribution (0: per-element
    # Gaussian only); at most the emotion's training clips - 1 are used
    latent_components: int = 0

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


LATENT_SOURCES = ("posterior", "prior")  # where `sample` draws latents from


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
        # the per-emotion latent distribution (module docstring); unfitted it is N(0, I)
        shape = (cfg.num_classes, *self.latent_shape(AudioConfig().num_frames))
        self.register_buffer("latent_mean", torch.zeros(shape))
        self.register_buffer("latent_std", torch.ones(shape))
        self.register_buffer("latent_count", torch.zeros(cfg.num_classes))
        # orthonormal principal directions (rows) and their standard deviations; zero rows
        # where an emotion has fewer clips than directions
        size = math.prod(shape[1:])
        self.register_buffer("latent_basis", torch.zeros(cfg.num_classes, cfg.latent_components, size))
        self.register_buffer("latent_scales", torch.zeros(cfg.num_classes, cfg.latent_components))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # checkpoints from before the fitted latent distribution (or its principal
        # directions): keep the unfitted one
        for name in ("latent_mean", "latent_std", "latent_count", "latent_basis", "latent_scales"):
            state_dict.setdefault(prefix + name, getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def latent_distribution_fitted(self) -> bool:
        return bool(self.latent_count.sum() > 0)

    @torch.no_grad()
    def fit_latent_distribution(self, sums: torch.Tensor, squares: torch.Tensor, counts: torch.Tensor,
                                latents: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        """Per-emotion mean and std of encoder means from their per-class sums, sums of
        squares and counts ([num_classes, C, H, T] and [num_classes]); an emotion without
        clips keeps N(0, I). With latent_components > 0, also each emotion's principal
        directions, from the encoder means themselves (latents [N, C, H, T], labels [N]);
        the per-element std then holds only the variance they leave unexplained."""
        counts = counts.to(self.latent_count)
        seen = counts > 0
        n = counts.clamp(min=1).view(-1, 1, 1, 1)
        mean = sums.to(self.latent_mean) / n
        std = (squares.to(self.latent_mean) / n - mean**2).clamp(min=1e-8).sqrt()
        self.latent_mean[seen] = mean[seen]
        self.latent_std[seen] = std[seen]
        self.latent_count.copy_(counts)
        if self.config.latent_components == 0 or latents is None or labels is None:
            return
        self.latent_basis.zero_()
        self.latent_scales.zero_()
        flat = latents.flatten(1).double()
        for k in range(self.config.num_classes):
            rows = flat[labels.to(flat.device) == k]
            if len(rows) < 2:
                continue
            centred = rows - rows.mean(dim=0)
            _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
            used = min(self.config.latent_components, len(rows) - 1)
            scales = singular[:used] / math.sqrt(len(rows))  # population std, as latent_std
            self.latent_basis[k, :used] = directions[:used].to(self.latent_basis)
            self.latent_scales[k, :used] = scales.to(self.latent_scales)
            explained = ((directions[:used] * scales[:, None]) ** 2).sum(dim=0)
            residual = (self.latent_std[k].flatten().double() ** 2 - explained).clamp(min=1e-8).sqrt()
            self.latent_std[k] = residual.view_as(self.latent_std[k]).to(self.latent_std)

    def latents_from_noise(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Unit Gaussian noise [B, C, H, T] -> latents of the requested emotions' fitted
        distributions (the noise itself where it is unfitted)."""
        labels = labels.long().to(self.latent_mean.device)
        if noise.shape[1:] != self.latent_mean.shape[1:]:
            raise ValueError(f"latent noise of shape {tuple(noise.shape[1:])}: the fitted distribution is for "
                             f"{tuple(self.latent_mean.shape[1:])} ({AudioConfig().num_frames}-frame clips)")
        noise = noise.to(self.latent_mean)
        if self.config.latent_components == 0:
            return self.latent_mean[labels] + self.latent_std[labels] * noise
        # One noise tensor serves both parts: its projections on the orthonormal principal
        # directions are independent unit normals (the directions' coefficients), and what
        # is left of it, orthogonal to them, is independent of those (the residual).
        flat, basis = noise.flatten(1), self.latent_basis[labels]
        coefficients = torch.einsum("bkd,bd->bk", basis, flat)
        along = torch.einsum("bk,bkd->bd", coefficients * self.latent_scales[labels], basis)
        across = flat - torch.einsum("bk,bkd->bd", coefficients, basis)
        return self.latent_mean[labels] + along.view_as(noise) + self.latent_std[labels] * across.view_as(noise)

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
    def sample(self, labels: torch.Tensor, frames: int = 173, generator: torch.Generator | None = None,
               latent: str = "posterior") -> torch.Tensor:
        """Decode latents of the requested emotions: [len(labels), 1, n_mels, frames].
        latent: "posterior" (the emotion's fitted distribution) or "prior" (N(0, I))."""
        if latent not in LATENT_SOURCES:
            raise ValueError(f"latent must be one of {', '.join(LATENT_SOURCES)}, got {latent!r}")
        device = next(self.parameters()).device
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
        shape = (labels.shape[0], *self.latent_shape(frames))
        gen_device = generator.device if generator is not None else device
        z = torch.randn(shape, generator=generator, device=gen_device).to(device)
        if latent == "posterior":
            z = self.latents_from_noise(z, labels)
        return self.decode(z, labels, frames)


class LatentStatistics:
    """Per-class sums of encoder means, of their squares, and counts over a training pass:
    what `ConditionalVAE.fit_latent_distribution` needs, summable across workers."""

    def __init__(self, keep_latents: bool = False) -> None:
        self.sums: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        # the encoder means themselves (on CPU), for the principal directions
        self.keep_latents = keep_latents
        self.latent_batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def add(self, mu: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        mu, labels = mu.detach().double(), labels.long().to(mu.device)
        if self.sums is None:
            self.sums = torch.zeros((num_classes, *mu.shape[1:]), dtype=torch.float64, device=mu.device)
            self.squares = torch.zeros_like(self.sums)
            self.counts = torch.zeros(num_classes, dtype=torch.float64, device=mu.device)
        self.sums.index_add_(0, labels, mu)
        self.squares.index_add_(0, labels, mu**2)
        self.counts += torch.bincount(labels, minlength=num_classes).double()
        if self.keep_latents:
            self.latent_batches.append((mu.float().cpu(), labels.cpu()))

    @property
    def latents(self) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """(encoder means [N, C, H, T], labels [N]) kept over the pass, or (None, None)."""
        if not self.latent_batches:
            return None, None
        return torch.cat([m for m, _ in self.latent_batches]), torch.cat([y for _, y in self.latent_batches])

    def all_reduce(self) -> None:
        """Sum over data-parallel workers (every worker saw its own shard); kept latents
        are gathered, so every worker fits the same directions."""
        if dist.is_available() and dist.is_initialized() and self.sums is not None:
            for tensor in (self.sums, self.squares, self.counts):
                dist.all_reduce(tensor)
            if self.keep_latents:
                gathered: list = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, self.latents)
                self.latent_batches = [pair for pair in gathered if pair[0] is not None]


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
