"""The driver side of training: the speaker split as Ray datasets, the loop config of a
model, its MLflow run, and `fit` (one Ray Train run) / `train_in_process` (the loop in
the current process, e.g. inside a Ray task)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emogen.checkpoint import load_state
from emogen.config import AudioConfig
from emogen.options import option
from emogen.presets import model_configs
from emogen.tracking.registry import is_model_uri, resolve_model_uri
from emogen.training.config import TrainConfig, train_config
from emogen.training.loop import run_training, train_loop_per_worker
from emogen.training.session import DirectorySession
from emogen.training.tasks import NEEDS_VAE, model_spec

# ------------------------------------------------------------------------ the data


def _split_metadata(features: str | Path) -> Any:
    from emogen.data.features import read_features

    meta = read_features(features, columns=["clip_id", "speaker", "dataset"])
    if meta.empty:
        raise ValueError(f"{features} holds no accepted clips")
    return meta


def split_assignment(features: str | Path, train_cfg: TrainConfig) -> dict[str, str]:
    """clip_id -> "train" | "val" | "test", speaker-independent, from the features' metadata."""
    from emogen.data.datasets import speaker_split

    meta = _split_metadata(features)
    split = speaker_split(meta, train_cfg.val_fraction, train_cfg.test_fraction, seed=train_cfg.split_seed)
    return dict(zip(meta["clip_id"], split))


def fold_assignments(features: str | Path, folds: int, train_cfg: TrainConfig) -> list[dict[str, str]]:
    """One clip_id -> "train" | "val" | "test" per speaker fold (`datasets.speaker_folds`
    with the config's split seed and validation share): every speaker tested in one fold."""
    from emogen.data.datasets import speaker_folds

    meta = _split_metadata(features)
    return [dict(zip(meta["clip_id"], split))
            for split in speaker_folds(meta, folds, train_cfg.val_fraction, seed=train_cfg.split_seed)]


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
    Features of a few thousand clips fit in the object store (~90 KB each), every epoch
    re-reads them, and a pipeline still running when the workers hold every CPU would
    wait forever for a CPU of its own.
    """
    import ray

    from emogen.data.features import features_dir

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
    from emogen.data.features import read_features

    return read_features(features, columns=["clip_id"])["clip_id"].tolist()


# -------------------------------------------------------------- the loop config


def require_vae(model: str, diffusion: Any, vae_checkpoint: str | Path | None) -> None:
    """Fail before any worker starts when latent diffusion (a DiffusionConfig) has no VAE."""
    if model == "diffusion" and diffusion.space == "latent" and not vae_checkpoint:
        raise ValueError(NEEDS_VAE)


def vae_path(vae_checkpoint: str | Path | None, tracking_uri: str | None = None) -> str | None:
    """The VAE a latent-diffusion training reads, as an absolute local path; a models:/ or
    runs:/ URI is downloaded here, at the driver, and then read like a path."""
    if not vae_checkpoint:
        return None
    if is_model_uri(vae_checkpoint):
        return str(resolve_model_uri(str(vae_checkpoint), tracking_uri).state_path)
    return str(Path(vae_checkpoint).resolve())


def loop_config(
    model: str,
    preset: str,
    overrides: dict[str, Any] | None = None,
    epochs: int | None = None,
    vae_checkpoint: str | Path | None = None,
    train_overrides: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker-loop config (see run_training) for a model of a preset (+ override
    sections), and the params to log for it. The caller fills in "mlflow" and "run_dir"."""
    spec = model_spec(model)
    overrides = {k: dict(v) if isinstance(v, dict) else v for k, v in (overrides or {}).items()}
    train_over = {**dict(overrides.pop("train", None) or {}), **(train_overrides or {})}
    if epochs is not None:
        train_over["epochs"] = epochs
    train_cfg = train_config(model, preset, train_over)
    cfgs = model_configs(preset, overrides)
    require_vae(model, cfgs["diffusion"], vae_checkpoint)
    config = {
        "model": model,
        "configs": {k: dataclasses.asdict(cfgs[k]) for k in spec.sections},
        "train": dataclasses.asdict(train_cfg),
        "audio": dataclasses.asdict(AudioConfig()),
        # a models:/ or runs:/ VAE is downloaded here and read like a path (emogen.tracking.registry)
        "extra": {"vae_checkpoint": vae_path(vae_checkpoint, tracking_uri), "vae_source": str(vae_checkpoint) if vae_checkpoint else None},
        "mlflow": None,
        "run_dir": None,
    }
    params = {"model": model, "preset": preset, "train": config["train"], **config["configs"]}
    return config, params


def start_child_run(
    run_name: str, model: str, params: dict[str, Any], tracking_uri: str | None = None, parent_run_id: str | None = None
) -> str:
    """The MLflow run of a training run name: found again on resume, else created with its
    params (as a child of parent_run_id when given). Returns the run id."""
    from emogen.tracking import runs as tracking

    return tracking.get_or_create_run(run_name, {"emogen.model": model}, params, tracking_uri, parent_run_id)


# ----------------------------------------------------------------- running it


@dataclass(frozen=True)
class FitConfig:
    """How `fit` runs a training, besides the model and the features; `emogen train`'s
    options are the fields declared with `option` (emogen.options), same names and defaults."""

    preset: str = option("demo", "tiny | demo | paper: model sizes and training defaults")
    # {"train": {...}, "ser": {...}, ...} on top of the preset (`emogen train --config FILE`)
    overrides: dict[str, Any] | None = None
    epochs: int | None = option(None, "epochs (default: the preset's)")
    num_workers: int = option(1, "Ray Train workers (data-parallel)")
    use_gpu: bool = option(False, "one GPU per worker, NCCL")
    storage_path: str | Path = option("runs/train", "local dir, shared file system or s3:// URI")
    # Re-running with the same storage_path and run_name resumes from the run's latest checkpoint.
    run_name: str | None = option(None, "re-use a name to resume that run (default MODEL-PRESET)")
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: local store in runs/mlflow)")
    vae_checkpoint: str | None = option(None, "diffusion in latent space: the trained VAE checkpoint")
    extra_train: list[str | Path] | None = option(
        None, "features dataset added to training only (e.g. generated clips); repeatable")
    max_failures: int = option(1, "worker-group restarts from the last checkpoint")
    register_as: str | None = option(None, "register the trained model under this name in the MLflow model registry")
    # a fault-tolerance drill (TrainConfig.fail_at_epoch); -1: none
    fail_at_epoch: int = option(-1, argparse.SUPPRESS)
    parent_run_id: str | None = None  # the MLflow run is a child of this one (an experiment's)
    # clip_id -> "train" | "val" | "test" (an experiment's speaker fold); None: split_assignment
    assignment: dict[str, str] | None = None
    label: str | None = None  # what its log lines start with (default: the model), e.g. "vae fold 0"
    cpus_per_worker: float | None = None  # CPUs (= torch threads) per worker; None: Ray Train's 1


def fit(model: str, features: str | Path, config: FitConfig = FitConfig()) -> dict[str, Any]:
    """Train one model with Ray Train and return a summary (metrics, checkpoint, MLflow run)."""
    import mlflow
    import ray.train
    from ray.train.torch import TorchTrainer

    from emogen.tracking import runs as tracking

    preset = config.preset
    train_over = {"fail_at_epoch": config.fail_at_epoch} if config.fail_at_epoch >= 0 else {}
    loop, params = loop_config(model, preset, config.overrides, config.epochs, config.vae_checkpoint, train_over,
                               config.tracking_uri)
    train_cfg = TrainConfig(**loop["train"])
    run_name = config.run_name or f"{model}-{preset}"
    storage_path = config.storage_path
    storage = str(Path(storage_path).resolve()) if "://" not in str(storage_path) else str(storage_path)
    run_dir = f"{storage}/{run_name}"

    assignment = config.assignment or split_assignment(features, train_cfg)
    counts = {s: sum(v == s for v in assignment.values()) for s in ("train", "val", "test")}
    extra_train = [str(p) for p in (config.extra_train or [])]
    counts["extra_train"] = sum(len(read_clip_ids(p)) for p in extra_train)
    if counts["train"] == 0:
        raise ValueError("the speaker split left no training clips")

    params.update(extra_train=",".join(extra_train), split_counts=counts, num_workers=config.num_workers)
    run_id = start_child_run(run_name, model, params, config.tracking_uri, config.parent_run_id)
    tracking_uri = tracking.resolve_tracking_uri(config.tracking_uri)
    loop["mlflow"] = {"tracking_uri": tracking_uri, "run_id": run_id}
    loop["run_dir"] = run_dir
    if config.label:
        loop["label"] = config.label
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=_resources_per_worker(config)),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets=split_datasets(features, assignment, extra_train=extra_train),
    )
    started = time.time()
    result = trainer.fit()
    seconds = time.time() - started
    if result.checkpoint is None:
        raise RuntimeError(f"training {model} produced no checkpoint (error: {result.error})")

    with result.checkpoint.as_directory() as ckpt_dir:
        final = load_state(ckpt_dir)
        # an MLflow model (runs:/RUN_ID/model), registered as a new version with register_as
        from emogen.inference.pyfunc import log_checkpoint_model

        logged = log_checkpoint_model(run_id, ckpt_dir, config.register_as)
        with mlflow.start_run(run_id=run_id):
            mlflow.set_tag("emogen.checkpoint", result.checkpoint.path)
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    return {
        "model": model,
        "preset": preset,
        "run_name": run_name,
        "epochs_completed": final["epoch"],
        "resumed_from": final["resumes"],
        "stopped_early": final["stopped_early"],
        "metrics": metrics,
        "checkpoint": result.checkpoint.path,
        "mlflow_run_id": run_id,
        "tracking_uri": tracking_uri,
        **logged,
        "split_counts": counts,
        "seconds": round(seconds, 1),
    }


def _resources_per_worker(config: FitConfig) -> dict[str, float] | None:
    if not config.cpus_per_worker:
        return None  # Ray Train's default: 1 CPU (+ 1 GPU with use_gpu)
    return {"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})}


def train_in_process(loop: dict[str, Any], datasets: dict[str, Any], run_dir: str | Path, use_gpu: bool = False) -> dict[str, Any]:
    """Run the worker loop here (e.g. inside a Ray task) with checkpoints in run_dir;
    returns the final state's summary. Many small trainings (an experiment's SERs) then
    run side by side as tasks instead of one Ray Train run after another."""
    loop = {**loop, "run_dir": str(run_dir)}
    try:
        run_training(loop, DirectorySession(datasets, run_dir, use_gpu))
    finally:
        if loop.get("mlflow"):
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.end_run()
    final = load_state(run_dir)
    return {
        "checkpoint": str(Path(run_dir).resolve()),
        "epochs_completed": final["epoch"],
        "stopped_early": final["stopped_early"],
        "resumed_from": final["resumes"],
        "history": final["history"],
        "metrics": final["history"][-1] if final["history"] else {},
    }
