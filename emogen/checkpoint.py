"""Checkpoints: one `state.pt` per checkpoint directory, written atomically, and the
networks and config objects rebuilt from it.

A state dict holds plain values only (tensors, numbers, strings, lists, dicts), so
`torch.load(weights_only=True)` reads it: "model_name", "model", "best_model" and
"ema_model" (weights; the last None without a weight average), "configs" (config
sections as dicts), "train", "audio", "extra", and the training progress the loop
resumes from (see emogen.training.loop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from emogen.config import replace
from emogen.errors import MissingInputError
from emogen.models import NETWORKS
from emogen.presets import CONFIG_CLASSES
from emogen.storage import atomic_write

STATE_FILE = "state.pt"


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write <directory>/state.pt atomically."""
    return atomic_write(Path(directory) / STATE_FILE, lambda tmp: torch.save(state, tmp))


def resolve_checkpoint(path: str | Path) -> Path:
    """The state file of a state.pt, a checkpoint directory, or a run directory (its newest
    checkpoint_*); MissingInputError when there is none. MLflow model URIs are resolved to
    one of these by emogen.tracking.registry."""
    path = Path(path)
    if path.is_dir() and not (path / STATE_FILE).exists():
        # Ray names checkpoints checkpoint_<timestamp>: the last in name order is the newest
        candidates = sorted(p for p in path.glob("checkpoint_*") if (p / STATE_FILE).exists())
        if candidates:
            path = candidates[-1]
    state_file = path / STATE_FILE if path.is_dir() else path
    if not state_file.exists():
        raise MissingInputError(f"no checkpoint at {state_file}")
    return state_file


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint (see resolve_checkpoint) -> the state dict, loaded with weights_only=True."""
    return torch.load(resolve_checkpoint(path), map_location=map_location, weights_only=True)


def plain(value: Any) -> Any:
    """Config values -> types torch.load(weights_only=True) accepts (tuples -> lists)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# ------------------------------------------------------- configs and networks


def build_configs(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Config sections as a checkpoint (or a training loop config) stores them, e.g.
    {"unet": {...}, "diffusion": {...}} -> the config dataclasses, unknown fields rejected."""
    return {name: replace(CONFIG_CLASSES[name](), values) for name, values in sections.items()}


def build_model(model_name: str, sections: dict[str, dict[str, Any]], weights: dict[str, Any] | None = None) -> nn.Module:
    """The network of a registered model ("ser", "vae", "diffusion") from its config
    sections, with weights loaded when given."""
    network = NETWORKS[model_name].build(build_configs(sections))
    if weights is not None:
        network.load_state_dict(weights)
    return network


def load_model(state: dict[str, Any]) -> nn.Module:
    """A checkpoint's network with its weight average when it was trained with one
    (TrainConfig.ema_decay), else its best validation weights (else the latest)."""
    return build_model(state["model_name"], state["configs"], state.get("ema_model") or state.get("best_model") or state["model"])
