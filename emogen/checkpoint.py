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

from emogen import storage
from emogen.config import replace
from emogen.errors import MissingInputError
from emogen.models import NETWORKS
from emogen.presets import CONFIG_CLASSES
from emogen.storage import atomic_write

STATE_FILE = "state.pt"


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write <directory>/state.pt atomically."""
    return atomic_write(Path(directory) / STATE_FILE, lambda tmp: torch.save(state, tmp))


def locate_checkpoint(ref: str | Path) -> str:
    """Where the state file of a checkpoint reference is, without reading it: a state.pt, a
    checkpoint directory, or a run directory (its newest checkpoint_*), a local path or a
    storage URI (s3://...). A URI is returned as a URI, listed but not downloaded, so a
    driver can check it and pin it and each node then fetches that one file. Raises
    MissingInputError naming the reference when there is no checkpoint. MLflow model URIs
    are resolved to one of these by emogen.tracking.registry."""
    if storage.is_uri(ref):
        return _locate_remote(storage.absolute(ref))
    path = storage.local_path(ref)
    if path.is_dir() and not (path / STATE_FILE).exists():
        # Ray names checkpoints checkpoint_<timestamp>: the last in name order is the newest
        candidates = sorted(p for p in path.glob("checkpoint_*") if (p / STATE_FILE).exists())
        if candidates:
            path = candidates[-1]
    state_file = path / STATE_FILE if path.is_dir() else path
    if not state_file.exists():
        raise MissingInputError(f"no checkpoint at {state_file}")
    return str(state_file)


def _locate_remote(location: str) -> str:
    """locate_checkpoint on object storage: one listing of the prefix (a run's few
    checkpoints), so a run folder costs no download of the checkpoints it does not use."""
    if storage.is_file(location):
        return location
    try:
        files = set(storage.list_files(location))
    except storage.StorageNotFound:
        files = set()
    if storage.join(location, STATE_FILE) in files:
        return storage.join(location, STATE_FILE)
    prefix = storage.join(location, "checkpoint_")
    candidates = sorted(f for f in files if f.startswith(prefix) and f.count("/") == prefix.count("/") + 1
                        and f.endswith("/" + STATE_FILE))
    if not candidates:
        raise MissingInputError(f"no checkpoint at {location}")
    return candidates[-1]


def resolve_checkpoint(ref: str | Path) -> Path:
    """The local state file of a checkpoint reference (see locate_checkpoint): a local one
    where it is, a remote one fetched into this node's cache (emogen.storage.fetch: once
    per node and version of the file, atomically)."""
    location = locate_checkpoint(ref)
    return storage.fetch(location) if storage.is_uri(location) else Path(location)


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint, local or on object storage (see resolve_checkpoint) -> the state dict,
    loaded with weights_only=True."""
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
