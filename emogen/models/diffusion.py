"""Noise schedules, training loss and the one sampling loop, on diffusers' schedulers.

The model (emogen.models.UNet), the noise scheduler (diffusers) and the sampling loop
(`sample`) are separate objects, as in diffusers' pipelines. All schedule and update
math is diffusers': the seed's hand-written DDPM step had a wrong factor
(1/sqrt(alpha_bar) for 1/sqrt(alpha)) that made samples explode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    # deferred: type hints only; diffusers loads when a scheduler is made
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    Scheduler = Union[DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler]

# Sampler name -> diffusers class name: the one list of samplers (CLI choices, configs).
# diffusers is imported on first use: config-only callers (CLI, job submission) import
# this module through emogen.presets and never sample.
SAMPLERS: dict[str, str] = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}


def scheduler_class(name: str) -> type:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    # deferred: diffusers is heavy, and config-only callers import this module for DiffusionConfig
    import diffusers

    return getattr(diffusers, SAMPLERS[name])


@dataclass(frozen=True)
class DiffusionConfig:
    """Diffusion process and sampling defaults (SPEC: linear betas 1e-4..0.02, 1000 steps)."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    space: str = "mel"  # "mel": U-Net on scaled log-mels; "latent": on the VAE's latent
    # Clipping the predicted x0 to [-1, 1] is right for mels (they are scaled to that
    # range) and wrong for VAE latents (unbounded); None picks by `space`.
    clip_sample: bool | None = None
    # Latent diffusion multiplies VAE latents by this so they have roughly unit variance
    # (Stable Diffusion's 0.18215); measure it on encoded training data.
    latent_scale: float = 1.0
    sampler: str = "ddim"
    num_inference_steps: int = 50
    guidance_scale: float = 1.0
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 DDPM-like
    # Min-SNR-gamma loss weighting (Hang et al. 2023): timesteps weighted by
    # min(SNR, gamma) relative to the prediction target's natural weight, so the many
    # nearly-clean, easy timesteps stop dominating the gradient. None = plain MSE.
    snr_gamma: float | None = None

    def __post_init__(self) -> None:
        if self.space not in ("mel", "latent"):
            raise ValueError(f"DiffusionConfig.space must be 'mel' or 'latent', got {self.space!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"DiffusionConfig.sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")

    @property
    def clip(self) -> bool:
        return self.space == "mel" if self.clip_sample is None else self.clip_sample


def make_train_scheduler(cfg: DiffusionConfig | None = None) -> DDPMScheduler:
    """The forward (noising) process used for training; samplers are derived from it."""
    cfg = cfg or DiffusionConfig()
    return scheduler_class("ddpm")(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=cfg.clip,
    )


def make_sampler(
    name: str | None = None,
    cfg: DiffusionConfig | None = None,
    train_scheduler: DDPMScheduler | None = None,
) -> Scheduler:
    """A fresh sampler ("ddpm", "ddim" or "dpm") sharing the training noise schedule.

    Built with `from_config` of the training scheduler so betas and prediction type can
    never drift apart between training and sampling. Each call returns a new object:
    schedulers are stateful (set_timesteps, DPM-Solver's history), so do not share one
    between concurrent sampling loops.
    """
    cfg = cfg or DiffusionConfig()
    name = name or cfg.sampler
    cls = scheduler_class(name)
    base = train_scheduler or make_train_scheduler(cfg)
    return cls.from_config(base.config)


def in_chunks(fn: Callable[..., torch.Tensor], rows: int | None, *tensors: torch.Tensor | None) -> torch.Tensor:
    """fn(*tensors) on fixed-size chunks of `rows` rows (None: one call on everything).

    The last chunk is padded by repeating its last row, so every call sees exactly `rows`
    rows: CPU kernels pick their algorithm by batch shape, and fixed chunks make a row's
    floating point independent of how many other rows share the batch. None tensors (e.g.
    unconditional labels) are passed through.
    """
    if rows is None:
        return fn(*tensors)
    n = tensors[0].shape[0]
    outs = []
    for start in range(0, n, rows):
        index = list(range(start, min(start + rows, n)))
        real = len(index)
        chunk = torch.tensor(index + [index[-1]] * (rows - real), device=tensors[0].device)
        outs.append(fn(*(t[chunk] if t is not None else None for t in tensors))[:real])
    return torch.cat(outs)


def diffusion_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """MSE between the model's prediction and the target at uniformly random timesteps,
    per item weighted by min-SNR-gamma when snr_gamma is given.

    The model sees its configured label dropout (it is in train mode during training),
    which is what teaches the null class for classifier-free guidance.
    """
    # deferred: diffusers is heavy, and config-only callers import this module for DiffusionConfig
    from diffusers.utils.torch_utils import randn_tensor

    b = x0.shape[0]
    noise = randn_tensor(tuple(x0.shape), generator=generator, device=x0.device)
    gen_device = generator.device if generator is not None else x0.device
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator, device=gen_device).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    pred = model(noisy, t, labels)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    else:  # "sample"
        target = x0
    if snr_gamma is None:
        return F.mse_loss(pred, target)
    per_item = F.mse_loss(pred, target, reduction="none").flatten(1).mean(dim=1)
    return (per_item * min_snr_weights(scheduler, t, snr_gamma)).mean()


def min_snr_weights(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-timestep loss weights of min-SNR-gamma for the scheduler's prediction type:
    min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v, min(SNR, gamma) for x0."""
    alpha_bar = scheduler.alphas_cumprod.to(t.device)[t]
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr
    if kind == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def batch_shape(labels: torch.Tensor | None, shape: Sequence[int]) -> tuple[int, int, int, int]:
    """The full (B, C, H, T) sampling shape from a per-item (C, H, T) one (B from labels) or
    a full one, checked against labels."""
    shape = tuple(shape)
    if len(shape) == 3:
        if labels is None:
            raise ValueError("sample: give a full (B, C, H, T) shape when labels is None")
        shape = (labels.shape[0], *shape)
    if len(shape) != 4:
        raise ValueError(f"sample: shape must be (C, H, T) or (B, C, H, T), got {shape}")
    if labels is not None and labels.shape[0] != shape[0]:
        raise ValueError(f"sample: {labels.shape[0]} labels for a batch of {shape[0]}")
    return shape


def guided(model: nn.Module, guidance_scale: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """model(x, t, labels) with classifier-free guidance when the model offers it (the U-Net)."""

    def predict(model_in: torch.Tensor, t_batch: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if hasattr(model, "forward_with_cond_scale"):
            return model.forward_with_cond_scale(model_in, t_batch, labels, guidance_scale)
        return model(model_in, t_batch, labels)

    return predict


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def sample(
    model: nn.Module,
    scheduler: Scheduler,
    labels: torch.Tensor | Sequence[int] | None,
    shape: Sequence[int],
    num_inference_steps: int,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    model_chunk_rows: int | None = None,
) -> torch.Tensor:
    """Generate a batch by running `scheduler` backwards from seeded Gaussian noise.

    shape: per-item (C, H, T) or full (B, C, H, T); the batch size comes from labels when
    given (labels=None: unconditional, batch from shape). guidance_scale is the
    classifier-free guidance scale (1 = plain conditional). eta is passed to DDIM only.
    All randomness (initial noise and DDPM's/DDIM's per-step noise) comes from
    `generator`: one torch.Generator for the whole batch, or a list with one per row
    (diffusers' `randn_tensor` then draws each row from its own, so a row's numbers do not
    depend on the other rows). Without one, a CPU generator seeded with `seed` is used:
    the same seed gives the same output.
    model_chunk_rows: call the model on fixed chunks of this many rows (see `in_chunks`),
    so a row's floating point does not depend on its batch mates either.
    progress(step, total) is called after each step (step counts from 1).
    """
    # deferred: diffusers is heavy, and config-only callers import this module for DiffusionConfig
    from diffusers.utils.torch_utils import randn_tensor

    device = next(model.parameters()).device
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    shape = batch_shape(labels, shape)
    if isinstance(generator, list) and len(generator) != shape[0]:
        raise ValueError(f"sample: {len(generator)} generators for a batch of {shape[0]}")
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)

    x = randn_tensor(shape, generator=generator, device=device) * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_inference_steps, device=device)
    step_kwargs: dict = {"generator": generator}
    if isinstance(scheduler, scheduler_class("ddim")):
        step_kwargs["eta"] = eta
    predict = guided(model, guidance_scale)
    with evaluating(model):
        total = len(scheduler.timesteps)
        for i, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(x, t)
            pred = in_chunks(predict, model_chunk_rows, model_in, t.expand(shape[0]).to(device), labels)
            x = scheduler.step(pred, t, x, **step_kwargs).prev_sample
            if progress is not None:
                progress(i + 1, total)
    return x
