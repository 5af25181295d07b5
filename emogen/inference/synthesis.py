"""Batched, seed-deterministic synthesis on a replica, and batched Griffin-Lim rendering.

Requests batched on the replica (emogen.serving.batching) are grouped by (sampler, steps,
guidance_scale, eta) and each group is one `EmotionGenerator.generate_rows` call, so one
U-Net call per step serves the whole group. The same request gives the same bytes alone
or batched:
- its random numbers come only from its own `torch.Generator(seed)`, given for each of its
  rows (initial noise and, for DDPM / DDIM with eta > 0, the per-step noise);
- its floating point does not depend on its batch mates, because every model call runs on
  fixed chunks of `stack_rows` rows (CPU kernels choose their algorithm by batch shape);
- the WAVs of a whole batch come from one `MelInverter` call, which runs every clip
  through the same tensor shapes (its `clips_per_pass`), so a clip's samples do not
  depend on its batch mates either.
tests/serving/test_serve.py checks both formats that carry numbers (WAV, NPY).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from emogen.audio.mel import MelInverter
from emogen.config import EMOTION_TO_INDEX, AudioConfig
from emogen.inference.generator import EmotionGenerator
from emogen.inference.schema import DEFAULT_STACK_ROWS, Job


def synthesize_mels(generator: EmotionGenerator, jobs: Sequence[Job], stack_rows: int = DEFAULT_STACK_ROWS,
                    progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Scaled log-mels [num_samples, n_mels, frames] for each job, in order; progress(step,
    total) after every denoising step (it may raise to stop the batch)."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.group, []).append(i)
    results: dict[int, np.ndarray] = {}
    for members in groups.values():
        group = [jobs[i] for i in members]
        labels = [EMOTION_TO_INDEX[job.emotion] for job in group for _ in range(job.num_samples)]
        row_generators = []
        for job in group:  # a request's rows draw, in turn, from the request's one generator
            row_generators += [torch.Generator(device="cpu").manual_seed(job.seed)] * job.num_samples
        first = group[0]
        mels = generator.generate_rows(labels, row_generators, first.sampler, first.steps, first.guidance_scale,
                                       first.eta, chunk_rows=stack_rows, progress=progress)
        offset = 0
        for i, job in zip(members, group):
            results[i] = mels[offset:offset + job.num_samples]
            offset += job.num_samples
    return [results[i] for i in range(len(jobs))]


class AudioRenderer:
    """Mels -> waves with Griffin-Lim, a whole batch per call (same numbers alone or batched)."""

    def __init__(self, audio_cfg: AudioConfig, n_iter: int | None = None):
        self.inverter = MelInverter(audio_cfg, n_iter=n_iter)
        self.sample_rate = audio_cfg.sample_rate

    def __call__(self, mels: np.ndarray) -> np.ndarray:
        """[clips, n_mels, frames] -> float32 waves [clips, samples]."""
        return self.inverter(np.asarray(mels, dtype=np.float32))
