"""Self-attention maps of the diffusion U-Net while it generates one clip.

What an attention map is here. Each `AttentionBlock` of the U-Net attends over every
position of its (frequency x time) feature grid: at a block whose grid is H x W (the mel,
or for latent diffusion the VAE latent, down-sampled 2x per U-Net level on both axes),
the weights are an [HW, HW] matrix whose row q is the softmax distribution over the key
positions that query position q attends to, so every row sums to 1. Positions are
flattened row-major (index = frequency row * W + time column), as the block does. We keep
the weights of ONE generated clip, averaged over heads, at a few denoising steps.

    generator = EmotionGenerator.from_checkpoint("runs/train/diffusion-demo")
    maps = capture_attention(generator, "fear", steps_to_capture=[0, 5, 9])
    plot_attention(maps, "runs/attention/fear.png")  # or attention_png(maps) -> PNG bytes

How to read the PNG. On top is the generated clip's scaled log-mel (frequency up, time to
the right, in mel bins and frames). Below it is one row per captured denoising step
(step 0 is the first, noisiest one; its diffusion timestep t is in the title) and one
column per attention block in forward order (down<level>, mid, up<level>; a down and an
up block of the same level see the same grid). Each heatmap is the attention a
time-frequency position *receives*, averaged over all query positions (also a
distribution: it sums to 1), stretched onto the mel's axes so a time on the heatmap is
the same frame as on the mel. The colour is in multiples of uniform attention (1/HW), so
blocks with different grids share one scale: 1 means "no preference", a bright patch is
a region the whole clip looks at.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union

import numpy as np
import torch
from torch import nn

from emogen.storage import atomic_write
from emogen.errors import InvalidInputError
from emogen.inference.config import SamplingOptions
from emogen.inference.generator import EmotionGenerator, emotion_labels
from emogen.models.diffusion import DiffusionConfig, make_sampler
from emogen.models.layers import AttentionBlock

if TYPE_CHECKING:
    # deferred: type hints only; matplotlib loads when a figure is drawn
    from matplotlib.figure import Figure

Query = Union[Literal["mean"], int]


@dataclass(frozen=True)
class StepAttention:
    """The attention weights of every block at one denoising step."""

    step: int  # index into the sampler's steps, 0 = the first (noisiest) one
    timestep: int  # the diffusion timestep t the U-Net was called with at that step
    weights: dict[str, np.ndarray]  # block name -> [HW, HW], head-averaged, rows sum to 1


@dataclass
class AttentionMaps:
    """What `capture_attention` saw while generating one clip of `emotion`."""

    emotion: str
    steps: list[StepAttention]  # in sampling order
    grids: dict[str, tuple[int, int]]  # block name -> its (H, W) grid, in forward order
    mel: np.ndarray  # the generated clip's scaled log-mel [n_mels, frames]
    sampler: str
    num_inference_steps: int
    guidance_scale: float
    seed: int
    info: dict = field(default_factory=dict)  # free-form context (checkpoint, model space)

    @property
    def blocks(self) -> list[str]:
        return list(self.grids)

    @property
    def step_indices(self) -> list[int]:
        return [s.step for s in self.steps]


# ------------------------------------------------------------------ block names


def attention_block_names(unet: nn.Module) -> dict[str, AttentionBlock]:
    """Stable names of the U-Net's attention blocks, in forward order.

    "down<level>" / "mid" / "up<level>", named by resolution level (0 = full resolution)
    rather than by the ups list index, which counts levels backwards. A level with several
    residual blocks gets ".<j>" suffixes. Modules outside that layout keep their path.
    """
    paths = [(path, m) for path, m in unet.named_modules() if isinstance(m, AttentionBlock)]
    levels = len(getattr(unet, "ups", ()))
    names = []
    for path, _ in paths:
        parts = path.split(".")
        if path == "mid_attn":
            names.append(("mid", None))
        elif len(parts) == 5 and parts[0] == "downs":  # downs.<level>.<stage>.<j>.<attn>
            names.append((f"down{parts[1]}", parts[3]))
        elif len(parts) == 5 and parts[0] == "ups":  # ups.<i>.<stage>.<j>.<attn>, i = last level - level
            names.append((f"up{levels - 1 - int(parts[1])}", parts[3]))
        else:
            names.append((path, None))
    counts: dict[str, int] = {}
    for base, _ in names:
        counts[base] = counts.get(base, 0) + 1
    return {
        (f"{base}.{j}" if counts[base] > 1 and j is not None else base): module
        for (base, j), (_, module) in zip(names, paths)
    }


# ------------------------------------------------------------------- capturing


def default_steps_to_capture(total: int) -> list[int]:
    """First, middle and last denoising step (fewer when there are fewer steps)."""
    return sorted({0, total // 2, total - 1})


class AttentionRecorder:
    """Forward hooks on a U-Net that keep the attention weights of its conditional pass at
    the wanted denoising steps; a context manager, so the hooks are removed whatever happens.

    `UNet.forward_with_cond_scale` calls `UNet.forward` directly, so hooks on the U-Net
    itself never fire; its embedding submodules are called normally, on every pass, before
    any attention block: the time MLP sees t, the class embedding the labels after guidance
    dropout (the null class on the unconditional pass). `progress` is the sampler's
    per-step callback, which says which step runs next.
    """

    def __init__(self, unet: nn.Module, wanted: Sequence[int]):
        self.unet = unet
        self.wanted = set(wanted)
        self.blocks = attention_block_names(unet)
        self.step = 0  # the denoising step running now
        self.timestep = 0  # t of the current U-Net call
        self.conditional = False  # whether the current U-Net call is the one that sees the emotion
        self.grids: dict[str, tuple[int, int]] = {}
        self.weights: dict[int, dict[str, np.ndarray]] = {}  # step -> block -> [HW, HW]
        self.timesteps: dict[int, int] = {}  # step -> t
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def recording(self) -> bool:
        return self.conditional and self.step in self.wanted

    def __enter__(self) -> AttentionRecorder:
        try:
            self._handles += [self.unet.time_mlp.register_forward_pre_hook(self._on_time_embedding),
                              self.unet.class_emb.register_forward_pre_hook(self._on_class_embedding)]
            self._handles += [block.register_forward_hook(functools.partial(self._on_block_output, name))
                              for name, block in self.blocks.items()]
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def progress(self, done: int, _total: int) -> None:
        self.step = done  # called after step done-1: the next step to run is `done`

    def _on_time_embedding(self, module: nn.Module, args: tuple) -> None:
        self.timestep = int(torch.as_tensor(args[0]).reshape(-1)[0])

    def _on_class_embedding(self, module: nn.Module, args: tuple) -> None:
        self.conditional = int(args[0].reshape(-1)[0]) != self.unet.null_class
        if self.recording:
            self.timesteps[self.step] = self.timestep

    def _on_block_output(self, name: str, module: AttentionBlock, args: tuple, output: torch.Tensor) -> None:
        if not self.recording:
            return
        x = args[0]
        # forward, not __call__: no hooks re-entered; the result is thrown away
        _, attn = module.forward(x, return_attention=True)
        self.grids[name] = (int(x.shape[-2]), int(x.shape[-1]))
        # row 0: the one clip generated; mean over heads, in float64 so the sums stay 1
        self.weights.setdefault(self.step, {})[name] = attn[0].double().mean(0).cpu().numpy()

    def steps(self) -> list[StepAttention]:
        """What was recorded, in sampling order; RuntimeError if a wanted step was never seen."""
        missing = sorted(s for s in self.wanted if s not in self.weights)
        if missing:  # a sampler that calls the model differently from emogen.models.diffusion.sample
            raise RuntimeError(f"no attention captured at steps {missing}")
        return [StepAttention(s, self.timesteps[s], {name: self.weights[s][name] for name in self.grids})
                for s in sorted(self.wanted)]

    def block_grids(self) -> dict[str, tuple[int, int]]:
        """Block name -> its (H, W) grid, in forward order."""
        return {name: self.grids[name] for name in self.blocks if name in self.grids}


def _diffusion_unet(generator: EmotionGenerator) -> nn.Module:
    if generator.unet is None:
        raise InvalidInputError(
            f"{generator.checkpoint or 'this checkpoint'} is a VAE checkpoint: it has no U-Net, so no attention "
            "to show; use a diffusion checkpoint"
        )
    return generator.unet


def _steps_to_capture(options: SamplingOptions, config: DiffusionConfig, requested: Sequence[int] | None) -> tuple[list[int], int]:
    """(the step indices to capture, the number of denoising steps), checked before any sampling.

    The schedule's length comes from a throwaway sampler: schedulers are deterministic given
    the config, and the indices must be checked before minutes of sampling, not after."""
    schedule = make_sampler(options.sampler, config)
    schedule.set_timesteps(options.steps)
    total = len(schedule.timesteps)
    wanted = default_steps_to_capture(total) if requested is None else sorted({int(s) for s in requested})
    bad = [s for s in wanted if not 0 <= s < total]
    if bad or not wanted:
        raise InvalidInputError(f"steps to capture {bad or '[]'}: choose step indices in 0..{total - 1} ({total} denoising steps)")
    return wanted, total


def capture_attention(
    generator: EmotionGenerator,
    emotion: str,
    steps_to_capture: Sequence[int] | None = None,
    seed: int = 0,
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    eta: float | None = None,
) -> AttentionMaps:
    """Generate one clip of `emotion` and keep the U-Net's self-attention at chosen steps.

    steps_to_capture: 0-based indices into the sampler's denoising steps (default: the
    first, middle and last). Sampling options default to the checkpoint's, as in
    `EmotionGenerator.generate`; the clip is exactly `generator.generate(emotion, 1, ...,
    seed=seed)`: capture does not change it.

    Which pass: with classifier-free guidance (guidance_scale != 1) the U-Net runs twice
    per step, first with the emotion label and then with the null class (two calls,
    not a doubled batch; `UNet.forward_with_cond_scale`). The maps are from the
    conditional pass, the one that sees the emotion.

    Why not `set_store_attention(unet, True)`: a stored-weights block computes an explicit
    softmax instead of the fused scaled_dot_product_attention kernel, and the two differ in
    floating point, so the clip shown would not be the clip the model generates. Instead
    a forward hook (`AttentionRecorder`) re-runs each block on its own input with
    `return_attention=True`, at the captured steps only, and discards that output: the
    sampling path is untouched, and `store_attention` / `last_attention` are never
    switched on.
    """
    unet = _diffusion_unet(generator)
    try:  # an unknown emotion fails here, before any sampling, as the user's mistake
        emotion_labels(emotion)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc
    cfg = generator.diffusion
    options = SamplingOptions(sampler=sampler, steps=steps, guidance_scale=guidance_scale, eta=eta).with_defaults(cfg)
    wanted, total = _steps_to_capture(options, cfg, steps_to_capture)
    with AttentionRecorder(unet, wanted) as recorder:
        mels = generator.generate(emotion, 1, sampler=options.sampler, steps=options.steps,
                                  guidance_scale=options.guidance_scale, eta=options.eta, seed=seed,
                                  progress=recorder.progress)
    return AttentionMaps(
        emotion=emotion,
        steps=recorder.steps(),
        grids=recorder.block_grids(),
        mel=np.asarray(mels[0]),
        sampler=options.sampler,
        num_inference_steps=total,
        guidance_scale=float(options.guidance_scale),
        seed=seed,
        info={"checkpoint": generator.checkpoint, "space": cfg.space},
    )


# ------------------------------------------------------------------ reading maps


def attention_to_image(weights: np.ndarray, grid: tuple[int, int], query: Query = "mean") -> np.ndarray:
    """[HW, HW] weights -> [H, W]: where one query position looks, on the block's grid.

    query: a flattened position index (row-major: frequency row * W + time column) for
    what that position attends to, or "mean" for the average over all queries, i.e. the
    attention each position receives. Rows are softmax distributions, so both sum to 1.
    """
    h, w = grid
    weights = np.asarray(weights)
    if weights.shape != (h * w, h * w):
        raise ValueError(f"attention weights {weights.shape} do not match grid {grid}: expected ({h * w}, {h * w})")
    if isinstance(query, str):
        if query != "mean":
            raise ValueError(f"query must be 'mean' or a position index, got {query!r}")
        row = weights.mean(axis=0)
    else:
        if not 0 <= query < h * w:
            raise ValueError(f"query {query} outside 0..{h * w - 1}")
        row = weights[query]
    return row.reshape(h, w)


# -------------------------------------------------------------------- plotting


def attention_figure(maps: AttentionMaps) -> Figure:
    """The figure: the clip's mel on top, then steps x blocks heatmaps of received attention.

    The figure uses an explicit Agg canvas, as emogen.experiment.report does: no pyplot, no global
    backend switch, so it is safe to build in a server's worker threads. The caller
    renders it (`attention_png`, `plot_attention`) and then clears it.
    """
    # deferred: matplotlib loads only when a figure is drawn, not with every generator import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_mels, frames = maps.mel.shape
    blocks = maps.blocks
    rows, cols = len(maps.steps), max(len(blocks), 1)
    fig = Figure(figsize=(max(3.2 * cols, 6.0), 2.3 * (rows + 1) + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows + 1, cols)

    ax_mel = fig.add_subplot(grid[0, :])
    mel_image = ax_mel.imshow(maps.mel, origin="lower", aspect="auto", cmap="magma", vmin=-1, vmax=1,
                              interpolation="nearest", extent=(0, frames, 0, n_mels))
    ax_mel.set_title(f"generated {maps.emotion} (seed {maps.seed}, {maps.sampler}, {maps.num_inference_steps} steps, "
                     f"guidance {maps.guidance_scale:g})", fontsize=10)
    ax_mel.set_xlabel("frame")
    ax_mel.set_ylabel("mel bin")
    fig.colorbar(mel_image, ax=ax_mel, label="scaled log-mel", pad=0.01)

    # Multiples of uniform attention (x HW): one colour scale is then fair across blocks
    # whose grids, and so whose uniform level 1/HW, differ.
    images = {(s.step, b): attention_to_image(s.weights[b], maps.grids[b]) * np.prod(maps.grids[b])
              for s in maps.steps for b in blocks}
    vmax = max([float(img.max()) for img in images.values()] + [1.0])
    heat, heat_axes = None, []
    for r, step in enumerate(maps.steps):
        for c, name in enumerate(blocks):
            ax = fig.add_subplot(grid[r + 1, c])
            heat_axes.append(ax)
            h, w = maps.grids[name]
            # Every down-sampling (VAE and U-Net) halves both axes alike and heights are
            # never padded, so one grid cell spans n_mels / H mel bins and as many frames.
            # The grid's extra columns are the time padding past the clip: xlim cuts them.
            cell = n_mels / h
            heat = ax.imshow(images[(step.step, name)], origin="lower", aspect="auto", cmap="viridis", vmin=0.0,
                             vmax=vmax, interpolation="nearest", extent=(0, w * cell, 0, n_mels))
            ax.set_xlim(0, frames)
            ax.set_ylim(0, n_mels)
            ax.set_title(f"step {step.step} (t={step.timestep}) · {name} {h}×{w}", fontsize=9)
            if r == rows - 1:
                ax.set_xlabel("frame")
            if c == 0:
                ax.set_ylabel("mel bin")
    if heat is not None:
        fig.colorbar(heat, ax=heat_axes, shrink=0.8, label="attention received (× uniform)")
    return fig


def attention_png(maps: AttentionMaps) -> bytes:
    """`attention_figure` rendered to PNG bytes (what the service's /v1/attention returns)."""
    fig = attention_figure(maps)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        fig.clear()  # frees the artists now rather than at garbage collection


def plot_attention(maps: AttentionMaps, path: str | Path) -> Path:
    """`attention_png` written to `path` atomically (temp file + rename), parent folders created."""
    # Rendered before the temp file exists: a failing figure leaves nothing behind.
    png = attention_png(maps)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))
