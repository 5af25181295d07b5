"""The data of a training: the speaker-independent split of a features dataset (one, or
one per speaker fold) and its splits as Ray datasets, one per split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emogen.data.datasets import speaker_folds, speaker_split
from emogen.data.features import features_dir, read_features
from emogen.training.config import TrainConfig

SPLITS = ("train", "val", "test")


def _split_metadata(features: str | Path) -> Any:
    meta = read_features(features, columns=["clip_id", "speaker", "dataset"])
    if meta.empty:
        raise ValueError(f"{features} holds no accepted clips")
    return meta


def split_assignment(features: str | Path, train_cfg: TrainConfig) -> dict[str, str]:
    """clip_id -> "train" | "val" | "test", speaker-independent, from the features' metadata."""
    meta = _split_metadata(features)
    split = speaker_split(meta, train_cfg.val_fraction, train_cfg.test_fraction, seed=train_cfg.split_seed)
    return dict(zip(meta["clip_id"], split))


def fold_assignments(features: str | Path, folds: int, train_cfg: TrainConfig) -> list[dict[str, str]]:
    """One clip_id -> "train" | "val" | "test" per speaker fold (`datasets.speaker_folds`
    with the config's split seed and validation share): every speaker tested in one fold."""
    meta = _split_metadata(features)
    return [dict(zip(meta["clip_id"], split))
            for split in speaker_folds(meta, folds, train_cfg.val_fraction, seed=train_cfg.split_seed)]


def split_counts(assignment: dict[str, str]) -> dict[str, int]:
    """Clips per split; a split that leaves no training clip is an error."""
    counts = {s: sum(v == s for v in assignment.values()) for s in SPLITS}
    if counts["train"] == 0:
        raise ValueError("the speaker split left no training clips")
    return counts


def select_split(batch: Any, keep: frozenset[str] | None) -> Any:
    """Ray Data batch function: one split's accepted rows (keep=None: all of them). Mels
    stay encoded as bytes (decoded by the worker), so an empty selection is just an empty frame."""
    rows = batch[batch["status"] == "ok"]
    if keep is not None:
        rows = rows[rows["clip_id"].isin(keep)]
    return rows[["mel", "n_mels", "n_frames", "label"]]


def split_datasets(
    features: str | Path, assignment: dict[str, str], splits=("train", "val"), extra_train: list[str | Path] = ()
) -> dict[str, Any]:
    """One Ray dataset per split, materialized before training starts.

    extra_train: more features datasets (e.g. generated clips) added whole to training.
    Features of a few thousand clips fit in the object store, every epoch re-reads them,
    and a pipeline still running when the workers hold every CPU would wait forever for a
    CPU of its own.
    """
    import ray  # deferred: Ray is heavy to import, and `emogen --help` imports this module

    columns = ["clip_id", "status", "label", "mel", "n_mels", "n_frames"]
    source = ray.data.read_parquet(str(features_dir(features)), columns=columns)
    datasets = {}
    for split in splits:
        keep = frozenset(cid for cid, s in assignment.items() if s == split)
        datasets[split] = source.map_batches(select_split, fn_kwargs={"keep": keep}, batch_format="pandas")
    for extra in extra_train:
        more = ray.data.read_parquet(str(features_dir(extra)), columns=columns)
        datasets["train"] = datasets["train"].union(more.map_batches(select_split, fn_kwargs={"keep": None}, batch_format="pandas"))
    return {split: ds.materialize() for split, ds in datasets.items()}


def read_clip_ids(features: str | Path) -> list[str]:
    return read_features(features, columns=["clip_id"])["clip_id"].tolist()
