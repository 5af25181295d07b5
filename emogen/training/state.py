"""A training's checkpoint: `TrainState`, saved as the state.pt dict emogen.checkpoint reads.

The keys on disk are the field names, so `emogen.checkpoint.load_model`, inference and
serving read a TrainState's file as any other checkpoint; only the loop resumes from one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from emogen.checkpoint import load_state, save_state

Weights = dict[str, torch.Tensor]

# Fields older checkpoints (or a loop without EMA / AMP) may lack, with what they mean then.
_OPTIONAL = {"best_model": None, "ema_model": None, "grad_scaler": None, "stopped_early": False}


@dataclass
class TrainState:
    """The weights (latest, best by validation, averaged), the optimizer, schedule and
    grad-scaler states, the progress (epochs, best monitored loss, early-stopping count,
    per-epoch metrics, the epochs a restart resumed from) and the configs it was built from."""

    model_name: str
    model: Weights
    best_model: Weights | None
    ema_model: Weights | None
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    grad_scaler: dict[str, Any] | None
    epoch: int  # epochs completed
    best: float  # best monitored loss (validation, else training)
    bad_epochs: int  # epochs since it improved
    stopped_early: bool
    history: list[dict[str, float]]  # one metrics dict per epoch
    resumes: list[int]  # the epoch each resume started from
    configs: dict[str, dict[str, Any]]
    train: dict[str, Any]  # TrainConfig as a plain dict
    audio: dict[str, Any]  # AudioConfig as a plain dict
    extra: dict[str, Any]  # the task's (Task.checkpoint_extra), e.g. a latent diffusion's VAE

    def to_dict(self) -> dict[str, Any]:
        """The state.pt dict (a shallow one: dataclasses.asdict would copy every tensor)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def save(self, directory: str | Path) -> Path:
        """Write <directory>/state.pt atomically."""
        return save_state(directory, self.to_dict())

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        return cls(**{f.name: state.get(f.name, _OPTIONAL[f.name]) if f.name in _OPTIONAL else state[f.name]
                      for f in fields(cls)})

    @classmethod
    def load(cls, path: str | Path) -> TrainState:
        """A checkpoint (a state.pt, its folder, or a run folder: emogen.checkpoint.resolve_checkpoint)."""
        return cls.from_dict(load_state(path))
