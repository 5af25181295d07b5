"""Hyperparameter search with Ray Tune over the same training loop the jobs use.

    emogen tune ser --data runs/demo/data --preset demo --num-samples 8 --epochs 10

Each Tune trial is one function trainable (emogen.training.trial): with one worker (the
default) it runs the training loop in the trial's own process, so ASHA can stop it
cleanly; with `--num-workers N > 1` it drives an inner TorchTrainer (data-parallel
workers, `--cpus-per-trial`/`--gpus-per-trial` each) and reserves only a sliver of a CPU
itself (Tune refuses 0), so on a 2-CPU machine use `--num-workers 2 --cpus-per-trial 0.9`.
Such trials run with `--scheduler fifo` only: a trial Tune stops early (ASHA, or max_t)
leaves its inner Train run's workers reserved and the next trial would wait forever.

The options are the fields of `SweepConfig`; the default search spaces are package data,
`emogen/training/tune_spaces.yaml`, validated (like a `--space FILE`) by
emogen.training.spaces.

MLflow: one parent run per sweep (tag `emogen.run_name` = the sweep name), one child run
per trial (tag `mlflow.parentRunId`) with the trial's params and per-epoch metrics.
The sweep directory (`<storage-path>/<name>`) gets `results.csv` (trial, params, metric,
epochs, status) and `best_config.json` (the best trial's override sections plus a
`best_metric` key, loadable by `emogen train MODEL --config best_config.json`).

Re-running with the same `--storage-path` and `--name` resumes the sweep
(`Tuner.restore`): finished trials are kept, unfinished ones continue from their last
checkpoint.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emogen import storage
from emogen.data.features import features_dir
from emogen.errors import InvalidInputError, MissingInputError
from emogen.logs import get_logger
from emogen.options import add_config_options, add_ray_options, config_values, option
from emogen.presets import model_configs
from emogen.runtime import init_ray
from emogen.tracking import runs as tracking
from emogen.training.config import TrialSetup, train_config
from emogen.training.driver import require_vae, vae_reference
from emogen.training.spaces import SEARCHERS, SPACES_RESOURCE, load_space, make_searcher, to_param_space
from emogen.training.splits import split_assignment, split_counts, split_datasets
from emogen.training.tasks import MODELS
from emogen.training.tune_checkpoints import repair_lost_checkpoints

log = get_logger("tune")

SCHEDULERS = ("asha", "fifo")
MODES = ("min", "max")


@dataclass
class SweepConfig:
    """Everything a sweep takes; the options of `emogen tune MODEL` and tune/sweep.py are
    built from these fields (see add_arguments), so each default lives here only."""

    model: str = option(help="the model to tune", positional=True, choices=list(MODELS))
    data: str | Path = option(help="preprocess output folder (or its features/), local or s3://")
    preset: str = option("demo", "tiny | demo | paper: model sizes and training defaults")
    space: str | Path | dict | None = option(
        None, f"search space YAML/JSON (default: the built-in emogen/training/{SPACES_RESOURCE})", type=Path)
    search: str = option("random", "random (default), grid (choice -> every value), optuna/hyperopt if installed",
                          choices=list(SEARCHERS))
    num_samples: int = option(8, "trials (each grid point is repeated this many times)", type=int)
    epochs: int | None = option(None, "epochs per trial (ASHA's max_t; default: the preset's)", type=int)
    metric: str = option("val_loss", "reported metric to optimize (e.g. val_loss, val_uar)")
    mode: str = option("min", "min or max of the metric", choices=list(MODES))
    scheduler: str = option("asha", "asha: early-stop weak trials", choices=list(SCHEDULERS))
    grace_period: int = option(1, "ASHA: epochs before a trial can be stopped", type=int)
    reduction_factor: int = option(2, "ASHA: keep the top 1/N at each rung", type=int)
    max_concurrent: int | None = option(None, "trials running at once (default: as resources allow)", type=int)
    cpus_per_trial: float = option(1.0, "CPUs per trial (per worker with --num-workers > 1)", type=float)
    gpus_per_trial: float = option(0.0, "GPUs per trial (per worker with --num-workers > 1)", type=float)
    num_workers: int = option(1, "data-parallel Ray Train workers per trial (1 = in the trial process)", type=int)
    time_budget_s: float | None = option(None, "stop the sweep after this many seconds", type=float)
    storage_path: str | Path = option("runs/tune", "where the sweep and its trials' checkpoints go: a local folder, "
                                      "or s3://BUCKET/PREFIX (what a cluster with no shared disk needs)")
    name: str | None = option(None, "sweep name (default tune-MODEL-PRESET); an existing one is resumed")
    # None: resume when the sweep exists; True: require it; False: start fresh (fails if it exists)
    resume: bool | None = option(None, "require an existing sweep of this name and resume it",
                                  action="store_const", const=True)
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: local store in runs/mlflow)")
    vae_checkpoint: str | None = option(None, "latent diffusion: the trained VAE (a run folder, checkpoint folder or "
                                        "state.pt, local or s3://, or a models:/ URI)")
    max_failures: int = option(0, "retries of a failed trial from its last checkpoint", type=int)
    register_as: str | None = option(None, "register the best trial's model under this name in the MLflow model registry")

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise InvalidInputError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.mode not in MODES:
            raise InvalidInputError(f"--mode must be min or max, got {self.mode!r}")
        if self.search not in SEARCHERS:
            raise InvalidInputError(f"unknown search algorithm {self.search!r}; expected one of {', '.join(SEARCHERS)}")
        if self.scheduler not in SCHEDULERS:
            raise InvalidInputError(f"unknown scheduler {self.scheduler!r}; expected one of {', '.join(SCHEDULERS)}")
        if self.num_workers > 1 and self.scheduler != "fifo":
            raise InvalidInputError(
                "multi-worker trials (--num-workers > 1) need --scheduler fifo: a trial stopped by ASHA "
                "leaves its inner Ray Train workers reserved and the next trial would wait forever; "
                "or keep one worker per trial (the default), which ASHA can stop safely"
            )

    @property
    def sweep_name(self) -> str:
        return self.name or f"tune-{self.model}-{self.preset}"


def run_sweep(config: SweepConfig) -> dict[str, Any]:
    """Run (or resume) a sweep; returns a summary with the best trial and the table.

    config.space: a file, a {section: {field: spec}} dict, or None for the built-in spaces.
    """
    # deferred: the outputs import mlflow, heavy; `emogen --help` imports this module
    from emogen.training import sweep_output

    model, preset, metric, mode = config.model, config.preset, config.metric, config.mode
    if model == "diffusion":
        require_vae(model, model_configs(preset)["diffusion"], config.vae_checkpoint)
    vae = vae_reference(config.vae_checkpoint, config.tracking_uri)  # checked and pinned here, resolved in each trial
    space = config.space if isinstance(config.space, dict) else load_space(model, config.space)
    param_space = to_param_space(space, config.search)
    searcher = make_searcher(config.search, metric, mode)
    max_epochs = train_config(model, preset, {"epochs": config.epochs} if config.epochs is not None else None).epochs
    name, storage_root = config.sweep_name, storage.absolute(config.storage_path)
    sweep_dir = storage.join(storage_root, name)
    resume = _should_resume(config, sweep_dir)
    datasets, counts = _sweep_data(config)

    sweep_params = {key: getattr(config, key) for key in (
        "model", "preset", "search", "num_samples", "metric", "mode", "scheduler", "grace_period",
        "reduction_factor", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "num_workers")}
    sweep_params.update(epochs=max_epochs, split_counts=counts)
    parent_run_id, experiment_id = sweep_output.parent_run(name, config.tracking_uri, sweep_params)
    gpus = config.gpus_per_trial
    setup = TrialSetup(model=model, preset=preset, epochs=max_epochs, name=name,
                       tracking_uri=tracking.resolve_tracking_uri(config.tracking_uri), experiment_id=experiment_id,
                       parent_run_id=parent_run_id, num_workers=config.num_workers, use_gpu=gpus > 0,
                       vae_checkpoint=vae, train_storage=storage.join(sweep_dir, "_train"),
                       resources_per_worker={"CPU": config.cpus_per_trial, **({"GPU": gpus} if gpus > 0 else {})})
    started = time.time()
    results = _tuner(config, setup, datasets, param_space, searcher, storage_root, sweep_dir, resume).fit()
    seconds = time.time() - started

    rows, best = sweep_output.write_outputs(results, setup, metric, mode, sweep_dir, config.register_as)
    return {
        "model": model,
        "preset": preset,
        "name": name,
        "sweep_dir": sweep_dir,
        "trials": len(rows),
        "status": {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})},
        "stopped": {s: sum(r["stopped"] == s for r in rows) for s in sorted({r["stopped"] for r in rows})},
        "best": best,
        "best_config": storage.join(sweep_dir, "best_config.json") if best else None,
        "results_csv": storage.join(sweep_dir, "results.csv"),
        "mlflow_parent_run_id": parent_run_id,
        "tracking_uri": setup.tracking_uri,
        "split_counts": counts,
        "seconds": round(seconds, 1),
    }


def _should_resume(config: SweepConfig, sweep_dir: str) -> bool:
    """Resume when the sweep exists, locally or on object storage (or --resume requires it: then it must)."""
    exists = storage.is_file(storage.join(sweep_dir, "tuner.pkl"))
    resume = exists if config.resume is None else config.resume
    if resume and not exists:
        raise MissingInputError(f"nothing to resume: no sweep at {sweep_dir}")
    return resume


def _sweep_data(config: SweepConfig) -> tuple[dict[str, Any], dict[str, int]]:
    """The speaker split every trial trains on, as materialized Ray datasets, and its counts."""
    assignment = split_assignment(config.data, train_config(config.model, config.preset))
    counts = split_counts(assignment)
    if counts["val"] == 0 and config.metric.startswith("val_"):
        raise ValueError(f"the speaker split left no validation clips, so {config.metric!r} is never reported")
    return split_datasets(config.data, assignment), counts


def _tuner(config: SweepConfig, setup: TrialSetup, datasets: dict[str, Any], param_space: dict[str, Any], searcher: Any,
           storage_root: str, sweep_dir: str, resume: bool) -> Any:
    """A new Tuner over the trials, or the sweep's own restored (its lost checkpoints repaired)."""
    # deferred: Ray Tune (and the trial, which imports it) is heavy; `emogen --help` imports this module
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from emogen.training.trial import run_trial

    if config.num_workers <= 1:
        resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    else:
        # The trial only drives an inner TorchTrainer whose workers reserve their own
        # CPUs/GPUs (cpus_per_trial is then per worker): the driver itself takes a sliver.
        resources = {"cpu": 0.01}
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup, datasets=datasets), resources)
    if resume:
        log.info("resuming the sweep in %s", sweep_dir)
        tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, param_space=param_space)
        repair_lost_checkpoints(tuner.get_results())
        return tuner
    if config.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=setup.epochs, grace_period=min(config.grace_period, setup.epochs),
                                  reduction_factor=config.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=config.metric, mode=config.mode, scheduler=scheduler, search_alg=searcher,
            num_samples=config.num_samples, max_concurrent_trials=config.max_concurrent,
            time_budget_s=config.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=setup.name,
            storage_path=storage_root,
            failure_config=tune.FailureConfig(max_failures=config.max_failures, fail_fast=False),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1,
        ),
    )


# ------------------------------------------------------------------------ the CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `emogen tune MODEL` (and tune/sweep.py): one per SweepConfig field, plus
    where Ray runs."""
    add_config_options(p, SweepConfig)
    add_ray_options(p)


def cmd_tune(args: argparse.Namespace) -> dict:
    config = SweepConfig(**config_values(SweepConfig, args))
    features_dir(config.data)  # a wrong --data is reported before Ray starts
    if config.space is not None:
        load_space(config.model, config.space)  # so is a bad --space file
    init_ray(args.address, args.num_cpus)
    summary = run_sweep(config)
    summary.pop("best", None)  # the config is in best_config.json; keep the JSON line short
    return summary


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register `emogen tune {ser,vae,diffusion}` on the CLI's subparsers."""
    p = subparsers.add_parser("tune", help="hyperparameter search with Ray Tune (ASHA), every trial in MLflow")
    add_arguments(p)
    p.set_defaults(func=cmd_tune)
    return p
