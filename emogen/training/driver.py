"""The driver side of training: the loop config of a model, its MLflow run, and `fit`
(one Ray Train run) / `train_in_process` (the loop in the current process, e.g. inside a
Ray task)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from emogen import storage
from emogen.config import AudioConfig
from emogen.options import option
from emogen.presets import model_configs
from emogen.tracking import runs as tracking
from emogen.tracking.registry import pinned_reference
from emogen.training.config import LoopConfig, MlflowTarget, train_config
from emogen.training.loop import run_training, train_loop_per_worker
from emogen.training.session import DirectorySession
from emogen.training.splits import read_clip_ids, split_assignment, split_counts, split_datasets
from emogen.training.state import TrainState
from emogen.training.tasks import NEEDS_VAE, model_spec

WorkerLoop = Callable[[dict[str, Any]], None]  # what a Ray Train worker runs, given {"loop": LoopConfig}

# -------------------------------------------------------------- the loop config


def require_vae(model: str, diffusion: Any, vae_checkpoint: str | Path | None) -> None:
    """Fail before any worker starts when latent diffusion (a DiffusionConfig) has no VAE."""
    if model == "diffusion" and diffusion.space == "latent" and not vae_checkpoint:
        raise ValueError(NEEDS_VAE)


def vae_reference(vae_checkpoint: str | Path | None, tracking_uri: str | None = None) -> str | None:
    """The VAE a latent-diffusion training reads, checked here, at the driver, so a wrong
    one fails in one line before any worker starts, and pinned (see `pinned_reference`):
    a local path -> the absolute path of its state.pt, an s3:// run or checkpoint folder ->
    the URI of its newest state.pt, models:/NAME@ALIAS -> models:/NAME/VERSION.

    Each worker then resolves the pinned reference itself (DiffusionTask.setup): nodes
    share no disk, so a file this driver downloaded would exist on its node only. An
    s3:// state file is fetched into the worker node's cache, once per node. A models:/
    version is downloaded here (to check it holds a checkpoint) and again on each worker's
    node through MLflow, which every worker reaches anyway (rank 0 logs its metrics
    there): shipping the state by value instead would put a VAE's weights into the loop
    config every worker gets pickled. A local path is read where it is (on a cluster it
    must be on every node, as a local features folder must)."""
    if not vae_checkpoint:
        return None
    return pinned_reference(vae_checkpoint, tracking_uri)


def loop_config(
    model: str,
    preset: str,
    overrides: dict[str, Any] | None = None,
    epochs: int | None = None,
    vae_checkpoint: str | Path | None = None,
    train_overrides: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> tuple[LoopConfig, dict[str, Any]]:
    """The worker-loop config for a model of a preset (+ override sections), and the
    params to log for it. The caller fills in mlflow, run_dir and label."""
    spec = model_spec(model)
    overrides = {k: dict(v) if isinstance(v, dict) else v for k, v in (overrides or {}).items()}
    train_over = {**dict(overrides.pop("train", None) or {}), **(train_overrides or {})}
    if epochs is not None:
        train_over["epochs"] = epochs
    train_cfg = train_config(model, preset, train_over)
    cfgs = model_configs(preset, overrides)
    require_vae(model, cfgs["diffusion"], vae_checkpoint)
    loop = LoopConfig(
        model=model,
        configs={k: dataclasses.asdict(cfgs[k]) for k in spec.sections},
        train=train_cfg,
        audio=AudioConfig(),
        vae_checkpoint=vae_reference(vae_checkpoint, tracking_uri),
        vae_source=str(vae_checkpoint) if vae_checkpoint else None,
        vae_tracking_uri=tracking.resolve_tracking_uri(tracking_uri) if vae_checkpoint else None,
    )
    params = {"model": model, "preset": preset, "train": dataclasses.asdict(train_cfg), **loop.configs}
    return loop, params


def start_child_run(
    run_name: str, model: str, params: dict[str, Any], tracking_uri: str | None = None, parent_run_id: str | None = None
) -> str:
    """The MLflow run of a training run name: found again on resume, else created with its
    params (as a child of parent_run_id when given). Returns the run id."""
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
    storage_path: str | Path = option("runs/train", "where checkpoints go: a local folder, or s3://BUCKET/PREFIX "
                                      "(what a cluster with no shared disk needs)")
    # Re-running with the same storage_path and run_name resumes from the run's latest checkpoint.
    run_name: str | None = option(None, "re-use a name to resume that run (default MODEL-PRESET)")
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: local store in runs/mlflow)")
    vae_checkpoint: str | None = option(None, "diffusion in latent space: the trained VAE (a `emogen train vae` run "
                                        "folder, checkpoint folder or state.pt, local or s3://, or a models:/ URI)")
    extra_train: list[str | Path] | None = option(
        None, "features dataset added to training only (e.g. generated clips); repeatable")
    max_failures: int = option(1, "worker-group restarts from the last checkpoint")
    register_as: str | None = option(None, "register the trained model under this name in the MLflow model registry")
    parent_run_id: str | None = None  # the MLflow run is a child of this one (an experiment's)
    # clip_id -> "train" | "val" | "test" (an experiment's speaker fold); None: split_assignment
    assignment: dict[str, str] | None = None
    label: str | None = None  # what its log lines start with (default: the model), e.g. "vae fold 0"
    cpus_per_worker: float | None = None  # CPUs (= torch threads) per worker; None: Ray Train's 1


def fit(model: str, features: str | Path, config: FitConfig = FitConfig(), worker_loop: WorkerLoop | None = None) -> dict[str, Any]:
    """Train one model with Ray Train and return a summary (metrics, checkpoint, MLflow run).

    worker_loop: what each worker runs (default `train_loop_per_worker`, looked up at call
    time); a test or a benchmark passes its own wrapper around it."""
    loop, params = loop_config(model, config.preset, config.overrides, config.epochs, config.vae_checkpoint,
                               tracking_uri=config.tracking_uri)
    run_name = config.run_name or f"{model}-{config.preset}"
    storage_root = storage.absolute(config.storage_path)
    assignment = config.assignment or split_assignment(features, loop.train)
    counts = split_counts(assignment)
    extra_train = [str(p) for p in (config.extra_train or [])]
    counts["extra_train"] = sum(len(read_clip_ids(p)) for p in extra_train)

    params.update(extra_train=",".join(extra_train), split_counts=counts, num_workers=config.num_workers)
    run_id = start_child_run(run_name, model, params, config.tracking_uri, config.parent_run_id)
    loop.mlflow = MlflowTarget(tracking.resolve_tracking_uri(config.tracking_uri), run_id)
    loop.run_dir = storage.join(storage_root, run_name)
    loop.label = config.label
    trainer = _trainer(worker_loop or train_loop_per_worker, loop, config, run_name, storage_root,
                       split_datasets(features, assignment, extra_train=extra_train))
    started = time.time()
    result = trainer.fit()
    seconds = time.time() - started
    if result.checkpoint is None:
        raise RuntimeError(f"training {model} produced no checkpoint (error: {result.error})")
    # where the checkpoint is, as a user passes it back (--checkpoint, --vae-checkpoint):
    # Ray reports a file system and a path inside it, which for s3 lacks the scheme
    checkpoint = storage.uri_of(result.checkpoint.filesystem, result.checkpoint.path)
    final, logged = _log_final_model(result.checkpoint, checkpoint, run_id, config.register_as)
    return {
        "model": model,
        "preset": config.preset,
        "run_name": run_name,
        "epochs_completed": final.epoch,
        "resumed_from": final.resumes,
        "stopped_early": final.stopped_early,
        "metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
        "checkpoint": checkpoint,
        "mlflow_run_id": run_id,
        "tracking_uri": loop.mlflow.tracking_uri,
        **logged,
        "split_counts": counts,
        "seconds": round(seconds, 1),
    }


def _trainer(worker_loop: WorkerLoop, loop: LoopConfig, config: FitConfig, run_name: str, storage_root: str,
             datasets: dict[str, Any]) -> Any:
    # deferred: Ray Train is heavy to import, and `emogen --help` imports this module
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        worker_loop,
        train_loop_config={"loop": loop},
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=_resources_per_worker(config)),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_root,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
    )


def _log_final_model(checkpoint: Any, location: str, run_id: str, register_as: str | None) -> tuple[TrainState, dict[str, Any]]:
    """The final checkpoint's state, and the checkpoint logged as an MLflow model of the run
    (runs:/RUN_ID/model), registered as a new version of register_as when given."""
    # deferred: mlflow (and the pyfunc model, which imports it) is heavy; `emogen --help` imports this module
    import mlflow
    from emogen.inference.pyfunc import log_checkpoint_model

    with checkpoint.as_directory() as ckpt_dir:
        final = TrainState.load(ckpt_dir)
        logged = log_checkpoint_model(run_id, ckpt_dir, register_as)
        with mlflow.start_run(run_id=run_id):
            mlflow.set_tag("emogen.checkpoint", location)
    return final, logged


def _resources_per_worker(config: FitConfig) -> dict[str, float] | None:
    if not config.cpus_per_worker:
        return None  # Ray Train's default: 1 CPU (+ 1 GPU with use_gpu)
    return {"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})}


def train_in_process(loop: LoopConfig, datasets: dict[str, Any], run_dir: str | Path, use_gpu: bool = False) -> dict[str, Any]:
    """Run the worker loop here (e.g. inside a Ray task) with checkpoints in run_dir, a
    local folder or a location on object storage (a retried task on another node resumes
    from it); returns the final state's summary, its "checkpoint" the run_dir (a URI as
    given, a local path made absolute). Many small trainings (an experiment's SERs) then
    run side by side as tasks instead of one Ray Train run after another."""
    run_dir = storage.absolute(run_dir)
    loop = dataclasses.replace(loop, run_dir=run_dir)
    try:
        run_training(loop, DirectorySession(datasets, run_dir, use_gpu))
    finally:
        if loop.mlflow is not None:
            import mlflow  # deferred: mlflow is heavy to import, and `emogen --help` imports this module

            if mlflow.active_run() is not None:
                mlflow.end_run()
    final = TrainState.load(run_dir)
    return {
        "checkpoint": run_dir,
        "epochs_completed": final.epoch,
        "stopped_early": final.stopped_early,
        "resumed_from": final.resumes,
        "history": final.history,
        "metrics": final.history[-1] if final.history else {},
    }
