"""Configuration objects, one per concern, with the SPEC defaults.

Presets are data: a preset is a dict of overrides applied to these dataclasses,
never a separate code path.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from emogen.errors import InvalidInputError, MissingInputError

# The six emotions shared by EmoDB and RAVDESS, in label-index order.
EMOTIONS: tuple[str, ...] = ("anger", "sadness", "happiness", "neutral", "fear", "disgust")
EMOTION_TO_INDEX: dict[str, int] = {e: i for i, e in enumerate(EMOTIONS)}


@dataclass(frozen=True)
class AudioConfig:
    """Audio standardization and log-mel features (SPEC: the seed's numbers)."""

    sample_rate: int = 22_050
    duration_s: float = 4.0
    n_mels: int = 128
    n_fft: int = 2048
    hop_length: int = 512
    f_min: float = 20.0
    f_max: float = 8000.0
    # Log-mel in dB is clipped to [db_floor, db_ceil] and mapped linearly to [-1, 1].
    # A full-scale sine reaches +41 dB with these transforms and peak-normalized speech
    # stays below it; 120 dB of range reaches under the noise floor of 16-bit audio.
    db_floor: float = -80.0
    db_ceil: float = 40.0
    # A clip whose peak is below this is silent: it cannot be normalized meaningfully.
    silence_peak: float = 1e-4
    # A mel frame whose loudest band is below this is near-silent (a pause, or the padding
    # around a short utterance): real speech has such frames, so the realism measures
    # compare their share in generated and real clips.
    silent_frame_db: float = -60.0
    # Longer sources are rejected rather than decoded; within the limit only the centre
    # window is read from disk, so memory stays bounded whatever the file size.
    max_source_s: float = 900.0
    griffin_lim_iters: int = 24

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.duration_s))

    @property
    def num_frames(self) -> int:
        # torch/librosa STFT with center=True
        return self.num_samples // self.hop_length + 1


C = TypeVar("C")


def replace(cfg: C, overrides: dict[str, Any] | None) -> C:
    """Return a copy of a config dataclass with overrides, rejecting unknown keys."""
    if not overrides:
        return cfg
    names = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {type(cfg).__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return dataclasses.replace(cfg, **overrides)  # type: ignore[type-var]


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_overrides(path: str | Path | None) -> dict[str, Any]:
    """Read a JSON or YAML file of config overrides (sections keyed by concern)."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise MissingInputError(f"--config: no file at {path}")
    return read_mapping_file(path, "--config")


def read_mapping_file(path: str | Path, option: str) -> dict[str, Any]:
    """A JSON or YAML file (by its suffix) that holds a mapping of sections, e.g. a --config
    or --space file; a malformed one is the user's mistake, named with its option."""
    text = Path(path).read_text()
    is_yaml = str(path).endswith((".yaml", ".yml"))
    try:
        if is_yaml:
            import yaml  # deferred: only YAML files need it, and every command (--help too) imports this module

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError: the file, not a bug
        raise InvalidInputError(f"{option}: {path} is not valid {'YAML' if is_yaml else 'JSON'}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"{option}: {path} must hold a mapping of sections, e.g. {{\"train\": {{\"lr\": 0.001}}}}")
    return data
