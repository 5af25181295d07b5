"""Hyperparameter search with Ray Tune over the same training loop the jobs use.

    emogen tune ser --data runs/demo/data --preset demo --num-samples 8 --epochs 10

How a trial runs: each Tune trial is one function trainable (`_run_trial`). With one
worker (the default) it runs the training loop (`emogen.training.run_training`) *in the
trial's own process*, under a `TuneTrialSession` (reports go to `ray.tune.report`, resume comes from
`ray.tune.get_checkpoint`). No inner Ray Train run, so no second placement group: when
ASHA stops a trial, Tune ends that one actor and its CPUs are free for the next trial.
With `--num-workers N > 1` a trial drives an inner `TorchTrainer` (data-parallel
workers, `--cpus-per-trial`/`--gpus-per-trial` each), whose metrics reach Tune through
`TuneReportCallback`; the trial itself then reserves only 0.01 CPU (Tune refuses 0), so
on a 2-CPU machine use `--num-workers 2 --cpus-per-trial 0.9`. Such trials run with
`--scheduler fifo` only: in Ray 2.60 a trial Tune stops early (ASHA, or max_t) leaves its
inner Train run's workers reserved and the next trial waits forever (benchmarks/README.md).

The options are the fields of `SweepConfig`; the default search spaces are package data,
`emogen/tune_spaces.yaml`, validated (like a `--space FILE`) by the `SearchSpace` model.

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
import copy
import csv
import json
import math
import os
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from emogen.errors import InvalidInputError, MissingInputError
from emogen.logs import get_logger
from emogen.options import add_config_options, add_ray_options, config_values, option
from emogen.training import MODELS, SingleProcessSession, loop_config, model_spec, require_vae

log = get_logger("tune")

SPACES_RESOURCE = "tune_spaces.yaml"  # package data of `emogen.training`, beside this module
SECTIONS = ("train", "ser", "vae", "unet", "diffusion")
SEARCHERS = ("random", "grid", "optuna", "hyperopt")
SCHEDULERS = ("asha", "fifo")
MODES = ("min", "max")


# ------------------------------------------------------------------ search spaces


class Distribution(BaseModel):
    """One searched value, written as a one-key mapping: {loguniform: [low, high]}."""

    model_config = ConfigDict(extra="forbid")

    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    quniform: list[float] | None = None  # [low, high, q]
    randint: list[int] | None = None  # [low, high)
    lograndint: list[int] | None = None
    qrandint: list[int] | None = None
    choice: list[Any] | None = Field(None, min_length=1)
    grid: list[Any] | None = Field(None, min_length=1)  # every value, crossed with the others

    @model_validator(mode="after")
    def _one_distribution_of_the_right_arity(self) -> Distribution:
        given = self.model_dump(exclude_none=True)
        if len(given) != 1:
            raise ValueError(f"give exactly one distribution, got {', '.join(given) or 'none'}")
        kind, args = self.kind_and_args()
        arity = 3 if kind.startswith("q") else 2
        if kind not in ("choice", "grid") and len(args) != arity:
            raise ValueError(f"{kind} takes {arity} numbers, got {args!r}")
        return self

    def kind_and_args(self) -> tuple[str, list[Any]]:
        kind, args = next(iter(self.model_dump(exclude_none=True).items()))
        return kind, list(args)


# A constant (kept fixed in every trial) or a distribution: a mapping is always the latter.
SpaceValue = Annotated[
    Annotated[Distribution, Tag("distribution")] | Annotated[Any, Tag("constant")],
    Discriminator(lambda v: "distribution" if isinstance(v, (dict, Distribution)) else "constant"),
]
Fields = dict[str, SpaceValue]


class SearchSpace(BaseModel):
    """The space of one model: override sections of `emogen train --config`, each
    {field: distribution or constant}; a sampled trial config is an overrides file."""

    model_config = ConfigDict(extra="forbid")

    train: Fields | None = None
    ser: Fields | None = None
    vae: Fields | None = None
    unet: Fields | None = None
    diffusion: Fields | None = None

    def sections(self) -> dict[str, dict[str, Any]]:
        """{section: {field: {kind: [args]} or constant}}, as the YAML reads."""
        out = {}
        for section in SECTIONS:
            fields = getattr(self, section)
            if fields is not None:
                out[section] = {name: dict([value.kind_and_args()]) if isinstance(value, Distribution) else value
                                for name, value in fields.items()}
        return out


class SpacesFile(BaseModel):
    """A file of spaces per model, like the built-in emogen/tune_spaces.yaml."""

    model_config = ConfigDict(extra="forbid")

    ser: SearchSpace | None = None
    vae: SearchSpace | None = None
    diffusion: SearchSpace | None = None


def _describe(error: ValidationError, source: str) -> str:
    """Pydantic's errors as `source: section.field: what is wrong (got value)`."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"] if part not in ("distribution", "constant"))
        message = item["msg"].removeprefix("Value error, ")
        if "got" not in message:
            message += f" (got {item['input']!r})"
        problems.append(f"{where}: {message}" if where else message)
    return f"{source}: " + "; ".join(problems)


def validate_space(model: str, data: Any, source: str = "search space") -> dict[str, dict[str, Any]]:
    """A search space for `model` from either {model: {sections}} or the sections themselves;
    returns {section: {field: spec or constant}}. Errors name the bad key and value."""
    if not isinstance(data, dict):
        raise InvalidInputError(f"{source}: a search space is a mapping of sections, got {type(data).__name__}")
    try:
        per_model = SpacesFile.model_validate(data)
    except ValidationError as exc:
        per_model_error = exc
    else:
        space = getattr(per_model, model)
        if space is None:
            raise InvalidInputError(
                f"{source}: no search space for {model!r}; expected {{{model}: {{section: {{field: spec}}}}}} "
                f"or {{section: {{field: spec}}}} with sections among {', '.join(SECTIONS)}"
            )
        return space.sections()
    try:
        return SearchSpace.model_validate(data).sections()
    except ValidationError as exc:
        sections_error = exc
    # Report the errors of the form the file was evidently written in.
    looks_per_model = set(data) <= set(MODELS) and all(
        isinstance(v, dict) and set(v) <= set(SECTIONS) for v in data.values())
    raise InvalidInputError(_describe(per_model_error if looks_per_model else sections_error, source)) from None


def load_space(model: str, path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The search space of a model: {section: {field: spec or constant}}.

    path: a YAML/JSON file, either {model: {sections}} (like the built-in
    emogen/tune_spaces.yaml, used when path is None) or the sections themselves.
    """
    from emogen.config import read_mapping_file

    model_spec(model)  # an unknown model is a ValueError naming the known ones
    if path is None:
        source = f"emogen/{SPACES_RESOURCE}"
        data = yaml.safe_load(resources.files("emogen.training").joinpath(SPACES_RESOURCE).read_text())
    else:
        source = str(path)
        if not Path(path).is_file():
            raise MissingInputError(f"no search-space file at {path}")
        data = read_mapping_file(path, "--space")
    return validate_space(model, data, source)


def to_param_space(space: dict[str, dict[str, Any]], search: str = "random") -> dict[str, dict[str, Any]]:
    """Space specs -> Ray Tune domains (nested by section, as the trial config)."""
    from ray import tune

    def domain(value: Any) -> Any:
        if not isinstance(value, Distribution):
            return value
        kind, args = value.kind_and_args()
        if kind in ("choice", "grid"):
            return tune.grid_search(args) if kind == "grid" or search == "grid" else tune.choice(args)
        return getattr(tune, kind)(*args)

    try:
        validated = SearchSpace.model_validate(space)
    except ValidationError as exc:
        raise InvalidInputError(_describe(exc, "search space")) from None
    return {section: {name: domain(value) for name, value in getattr(validated, section).items()}
            for section in SECTIONS if getattr(validated, section) is not None}


def _searcher(search: str, metric: str, mode: str) -> Any:
    if search in ("random", "grid"):
        return None  # Tune's BasicVariantGenerator: random sampling, grid values crossed
    modules = {"optuna": ("ray.tune.search.optuna", "OptunaSearch", "optuna"),
               "hyperopt": ("ray.tune.search.hyperopt", "HyperOptSearch", "hyperopt")}
    if search not in modules:
        raise InvalidInputError(f"unknown search algorithm {search!r}; expected one of {', '.join(SEARCHERS)}")
    module, cls, package = modules[search]
    try:
        __import__(package)
    except ImportError:
        raise InvalidInputError(
            f"--search {search} needs the {package!r} package, which is not installed; "
            f"install it or use --search random (or grid)"
        ) from None
    import importlib

    return getattr(importlib.import_module(module), cls)(metric=metric, mode=mode)


def couple(model: str, preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Keep a sampled config trainable: in a latent-diffusion preset the U-Net's
    in_channels must equal vae.latent_channels, so it follows a searched latent size."""
    from emogen.presets import model_configs

    out = copy.deepcopy(overrides)
    latent = (out.get("vae") or {}).get("latent_channels")
    if latent is not None and "in_channels" not in (out.get("unet") or {}):
        base = model_configs(preset, {k: v for k, v in out.items() if k != "vae"})
        if base["diffusion"].space == "latent":
            out.setdefault("unet", {})["in_channels"] = latent
    return out


# ---------------------------------------------------------------------- the trial


class TuneTrialSession(SingleProcessSession):
    """Runs the training loop inside a Tune trial: reports and checkpoints go to Tune,
    the datasets are the sweep's materialized splits, one process, no DDP."""

    def get_checkpoint(self):
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics, checkpoint_dir=None):
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)


def _child_run(setup: dict[str, Any], trial_id: str, trial_name: str, params: dict[str, Any], sampled: dict[str, Any]) -> str:
    """The trial's MLflow run under the sweep's parent; found again when a trial resumes."""
    from mlflow.tracking import MlflowClient

    from emogen.tracking import runs as tracking

    client = MlflowClient(setup["tracking_uri"])
    found = client.search_runs(
        [setup["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{setup['parent_run_id']}' and tags.`emogen.trial_id` = '{trial_id}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        setup["experiment_id"],
        run_name=f"{setup['name']}/{trial_id}",
        tags={"mlflow.parentRunId": setup["parent_run_id"], "emogen.trial_id": trial_id,
              "emogen.trial_name": trial_name, "emogen.sweep": setup["name"], "emogen.model": setup["model"]},
    )
    from mlflow.entities import Param

    flat = {**tracking.flatten(params), **{f"sampled.{k}": v for k, v in tracking.flatten(sampled).items()}}
    items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def _run_trial(config: dict[str, Any], setup: dict[str, Any], datasets: dict[str, Any]) -> None:
    """One Tune trial: the sampled override sections -> the shared training loop."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from ray import tune

    from emogen.training import run_training

    context = tune.get_context()
    trial_id, trial_dir = context.get_trial_id(), context.get_trial_dir()
    overrides = couple(setup["model"], setup["preset"], config)
    run_id = None
    try:
        loop, params = loop_config(setup["model"], setup["preset"], overrides, setup["epochs"], setup.get("vae_checkpoint"))
        run_id = _child_run(setup, trial_id, context.get_trial_name(), params, config)
        loop["mlflow"] = {"tracking_uri": setup["tracking_uri"], "run_id": run_id}
        loop["run_dir"] = trial_dir
        if setup["num_workers"] <= 1:
            run_training(loop, TuneTrialSession(datasets, setup["use_gpu"]))
        else:
            _run_multi_worker(loop, setup, trial_id, datasets)
    except BaseException:
        if run_id is not None:
            if mlflow.active_run() is not None:
                mlflow.end_run("FAILED")
            else:
                MlflowClient(setup["tracking_uri"]).set_terminated(run_id, "FAILED")
        raise
    if mlflow.active_run() is not None:
        mlflow.end_run()
    else:
        MlflowClient(setup["tracking_uri"]).set_terminated(run_id, "FINISHED")


def _run_multi_worker(loop: dict[str, Any], setup: dict[str, Any], trial_id: str, datasets: dict[str, Any]) -> None:
    """A data-parallel trial: an inner TorchTrainer (Ray Train V2), metrics to Tune by
    TuneReportCallback. Named by trial id, so a restored sweep resumes it from its own
    checkpoints."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from emogen.training import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(num_workers=setup["num_workers"], use_gpu=setup["use_gpu"],
                                               resources_per_worker=setup["resources_per_worker"]),
        run_config=ray.train.RunConfig(
            name=f"{setup['name']}-{trial_id}",
            storage_path=setup["train_storage"],
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
        datasets=datasets,
    )
    trainer.fit()


# --------------------------------------------------------------------- the driver


def _trial_id(result: Any) -> str:
    found = (result.metrics or {}).get("trial_id")
    if found:
        return str(found)
    match = re.search(r"_([0-9a-f]{5}_\d{5})", Path(result.path).name) if result.path else None
    return match.group(1) if match else Path(str(result.path)).name


def repair_lost_checkpoints(results: Any) -> list[str]:
    """Point every unfinished trial back at a checkpoint that exists; returns the moves made.

    With `num_to_keep`, Tune deletes a trial's previous checkpoint as soon as it registers
    a new one, but snapshots the experiment state (which names the latest checkpoint) only
    periodically, later. A driver killed in between leaves a state naming a deleted checkpoint, and
    restoring that trial fails. The checkpoint that replaced it is the next one on disk,
    complete (it was registered); move it where the state looks. The trial then resumes
    from one epoch further than Tune's own counter says, which is why the table and ASHA
    count the loop's `epoch`, not `training_iteration`."""
    from pyarrow.fs import LocalFileSystem

    moves = []
    for result in results:
        checkpoint = result.checkpoint
        if checkpoint is None or result.path is None or not isinstance(checkpoint.filesystem, LocalFileSystem):
            continue  # on cloud storage Tune's race is the same, but a move is not one rename
        wanted = Path(checkpoint.path)
        if wanted.exists():
            continue
        newer = sorted(p for p in Path(result.path).glob("checkpoint_*") if p.name > wanted.name)
        if not newer:
            continue
        os.replace(newer[0], wanted)
        moves.append(f"{newer[0]} -> {wanted}")
        log.warning("%s: its latest checkpoint %s was deleted before the sweep state was saved; "
                    "resuming from %s instead", Path(result.path).name, wanted.name, newer[0].name)
    return moves


def results_table(results: Any, metric: str, mode: str, epochs: int) -> list[dict[str, Any]]:
    """One row per trial: trial, status, epochs, the metric (best over epochs and last),
    how it stopped, and the sampled params (flattened)."""
    from emogen.tracking import runs as tracking

    rows = []
    for result in results:
        history = result.metrics_dataframe
        values = []
        if history is not None and metric in history:
            values = [float(v) for v in history[metric].dropna().tolist()]
        last = result.metrics or {}
        # the loop's own epoch count: Tune's training_iteration lags it after a repaired resume
        done = int(last.get("epoch", last.get("training_iteration", 0)) or 0)
        if result.error is not None:
            status, stopped = "ERROR", "error"
        else:
            status = "TERMINATED"
            if last.get("stopped_early"):
                stopped = "early_stopping"
            elif done < epochs:
                stopped = "asha"
            else:
                stopped = "completed"
        best = (min(values) if mode == "min" else max(values)) if values else math.nan
        row = {"trial": _trial_id(result), "status": status, "epochs": done, f"best_{metric}": best,
               f"last_{metric}": values[-1] if values else math.nan, "stopped": stopped,
               "error": "" if result.error is None else _error_text(result.error)}
        row.update({f"param.{k}": v for k, v in tracking.flatten(_trial_config(result)).items()})
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def _trial_config(result: Any) -> dict[str, Any]:
    """A trial's sampled config; a restored errored trial may come back without it, so
    fall back to the params.json Tune wrote in the trial directory."""
    if result.config:
        return result.config
    try:
        return json.loads((Path(result.path) / "params.json").read_text())
    except (OSError, TypeError, ValueError):
        return {}


def _error_text(error: BaseException) -> str:
    """The root cause's last line (Tune wraps the trial's exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict[str, Any]], metric: str) -> str:
    columns = ["trial", "status", "epochs", f"best_{metric}", "stopped"]
    columns += sorted({k for r in rows for k in r if k.startswith("param.")})
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    table = [[c.removeprefix("param.") for c in columns]] + [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in table)


def _parent_run(name: str, tracking_uri: str | None, params: dict[str, Any]) -> tuple[str, str]:
    from emogen.tracking import runs as tracking

    experiment_id = tracking.configure(tracking_uri)
    run_id = tracking.get_or_create_run(name, {"emogen.sweep": name, "emogen.kind": "sweep"}, params, tracking_uri,
                                        running=True)  # until the sweep's summary ends it
    return run_id, experiment_id


@dataclass
class SweepConfig:
    """Everything a sweep takes; the options of `emogen tune MODEL` and tune/sweep.py are
    built from these fields (see add_arguments), so each default lives here only."""

    model: str = option(help="the model to tune", positional=True, choices=list(MODELS))
    data: Path = option(help="preprocess output folder (or its features/)")
    preset: str = option("demo", "tiny | demo | paper: model sizes and training defaults")
    space: str | Path | dict | None = option(
        None, f"search space YAML/JSON (default: the built-in emogen/{SPACES_RESOURCE})", type=Path)
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
    storage_path: str | Path = option("runs/tune", "local dir, shared file system or s3:// URI")
    name: str | None = option(None, "sweep name (default tune-MODEL-PRESET); an existing one is resumed")
    # None: resume when the sweep exists; True: require it; False: start fresh (fails if it exists)
    resume: bool | None = option(None, "require an existing sweep of this name and resume it",
                                  action="store_const", const=True)
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: local store in runs/mlflow)")
    vae_checkpoint: str | None = option(None, "latent diffusion: the trained VAE checkpoint")
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


def run_sweep(config: SweepConfig) -> dict[str, Any]:
    """Run (or resume) a sweep; returns a summary with the best trial and the table.

    config.space: a file, a {section: {field: spec}} dict, or None for the built-in spaces.
    """
    import mlflow
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from emogen.tracking import runs as tracking
    from emogen.training import split_assignment, split_datasets, train_config

    model, preset, metric, mode = config.model, config.preset, config.metric, config.mode
    if model == "diffusion":
        from emogen.presets import model_configs

        require_vae(model, model_configs(preset)["diffusion"], config.vae_checkpoint)
    space = config.space if isinstance(config.space, dict) else load_space(model, config.space)
    param_space = to_param_space(space, config.search)
    searcher = _searcher(config.search, metric, mode)
    train_cfg = train_config(model, preset, {"epochs": config.epochs} if config.epochs is not None else None)
    max_epochs = train_cfg.epochs
    name = config.name or f"tune-{model}-{preset}"
    storage_path = str(config.storage_path)
    storage = str(Path(storage_path).resolve()) if "://" not in storage_path else storage_path
    sweep_dir = Path(storage) / name
    exists = "://" not in storage and (sweep_dir / "tuner.pkl").exists()
    resume = exists if config.resume is None else config.resume
    if resume and "://" not in storage and not exists:
        raise MissingInputError(f"nothing to resume: no sweep at {sweep_dir}")

    assignment = split_assignment(config.data, train_cfg)
    counts = {s: sum(v == s for v in assignment.values()) for s in ("train", "val", "test")}
    if counts["train"] == 0:
        raise ValueError("the speaker split left no training clips")
    if counts["val"] == 0 and metric.startswith("val_"):
        raise ValueError(f"the speaker split left no validation clips, so {metric!r} is never reported")
    datasets = split_datasets(config.data, assignment)

    uri = tracking.resolve_tracking_uri(config.tracking_uri)
    sweep_params = {key: getattr(config, key) for key in (
        "model", "preset", "search", "num_samples", "metric", "mode", "scheduler", "grace_period",
        "reduction_factor", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "num_workers")}
    sweep_params.update(epochs=max_epochs, split_counts=counts)
    parent_run_id, experiment_id = _parent_run(name, config.tracking_uri, sweep_params)
    cpus_per_trial, gpus_per_trial = config.cpus_per_trial, config.gpus_per_trial
    setup = {"model": model, "preset": preset, "epochs": max_epochs, "num_workers": config.num_workers,
             "use_gpu": gpus_per_trial > 0, "tracking_uri": uri, "experiment_id": experiment_id,
             "parent_run_id": parent_run_id, "name": name, "vae_checkpoint": config.vae_checkpoint,
             "train_storage": f"{storage}/{name}/_train",
             "resources_per_worker": {"CPU": cpus_per_trial, **({"GPU": gpus_per_trial} if gpus_per_trial > 0 else {})}}

    if config.num_workers <= 1:
        resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    else:
        # The trial only drives an inner TorchTrainer whose workers reserve their own
        # CPUs/GPUs (cpus_per_trial is then per worker): the driver itself takes a sliver.
        resources = {"cpu": 0.01}
    trainable = tune.with_resources(tune.with_parameters(_run_trial, setup=setup, datasets=datasets), resources)

    if config.scheduler == "asha":
        sched = ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=min(config.grace_period, max_epochs),
                              reduction_factor=config.reduction_factor)
    else:
        sched = FIFOScheduler()
    started = time.time()
    if resume:
        log.info("resuming the sweep in %s", sweep_dir)
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, param_space=param_space)
        repair_lost_checkpoints(tuner.get_results())
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, scheduler=sched, search_alg=searcher, num_samples=config.num_samples,
                max_concurrent_trials=config.max_concurrent, time_budget_s=config.time_budget_s,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=config.max_failures, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=1,
            ),
        )
    results = tuner.fit()
    seconds = time.time() - started

    rows = results_table(results, metric, mode, max_epochs)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, sweep_dir / "results.csv")
    log.info("%d trials:\n%s", len(rows), format_table(rows, metric))

    configs = {_trial_id(result): _trial_config(result) for result in results}
    ok = [r for r in rows if r["status"] != "ERROR" and not math.isnan(r[f"best_{metric}"])]
    best = None
    if ok:
        pick = min if mode == "min" else max
        best_row = pick(ok, key=lambda r: r[f"best_{metric}"])
        best_config = couple(model, preset, configs[best_row["trial"]])
        best_config["best_metric"] = {"name": metric, "mode": mode, "value": best_row[f"best_{metric}"],
                                      "trial": best_row["trial"]}
        (sweep_dir / "best_config.json").write_text(json.dumps(best_config, indent=2, sort_keys=True) + "\n")
        best = {"trial": best_row["trial"], metric: best_row[f"best_{metric}"], "config": best_config}

    _close_runs(uri, experiment_id, parent_run_id, rows)
    if best is not None:
        best["model"] = _log_best_model(results, best, uri, experiment_id, parent_run_id, name, metric, config.register_as)
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.log_artifact(str(sweep_dir / "results.csv"))
        if best is not None:
            mlflow.log_artifact(str(sweep_dir / "best_config.json"))
            mlflow.log_metric(f"best_{metric}", best[metric])
            mlflow.set_tag("emogen.best_trial", best["trial"])
        mlflow.log_metrics({"trials": len(rows), "trials_error": sum(r["status"] == "ERROR" for r in rows),
                            "trials_stopped_by_asha": sum(r["stopped"] == "asha" for r in rows)})
        mlflow.set_tag("emogen.sweep_dir", str(sweep_dir))
    return {
        "model": model,
        "preset": preset,
        "name": name,
        "sweep_dir": str(sweep_dir),
        "trials": len(rows),
        "status": {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})},
        "stopped": {s: sum(r["stopped"] == s for r in rows) for s in sorted({r["stopped"] for r in rows})},
        "best": best,
        "best_config": str(sweep_dir / "best_config.json") if best else None,
        "results_csv": str(sweep_dir / "results.csv"),
        "mlflow_parent_run_id": parent_run_id,
        "tracking_uri": uri,
        "split_counts": counts,
        "seconds": round(seconds, 1),
    }


def _log_best_model(results: Any, best: dict[str, Any], uri: str, experiment_id: str, parent_run_id: str, name: str,
                    metric: str, register_as: str | None) -> dict[str, Any] | None:
    """The best trial's final checkpoint as an MLflow model of its run (registered as a new
    version of `register_as`, tagged with the sweep and its score), unless it was already."""
    from mlflow.tracking import MlflowClient

    from emogen.inference.pyfunc import log_checkpoint_model
    from emogen.tracking.registry import registered_version

    result = next((r for r in results if _trial_id(r) == best["trial"]), None)
    if result is None or result.checkpoint is None or not Path(result.checkpoint.path).exists():
        log.warning("the best trial %s has no checkpoint on this file system: its model is not logged", best["trial"])
        return None
    client = MlflowClient(uri)
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                                             f"tags.`emogen.trial_id` = '{best['trial']}'")
    if not runs:
        return None
    run_id = runs[0].info.run_id
    if register_as and registered_version(register_as, run_id, uri):
        return {"model_uri": f"runs:/{run_id}/model", "registered_model": register_as}  # a re-run of a finished sweep
    tags = {"emogen.sweep": name, f"emogen.best_{metric}": f"{best[metric]:.6g}"}
    return log_checkpoint_model(run_id, result.checkpoint.path, register_as, tags=tags)


def _close_runs(uri: str, experiment_id: str, parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    """Child runs end as their trials did (a trial Tune stopped never ends its own run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    by_trial = {r["trial"]: r for r in rows}
    for run in client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=5000):
        row = by_trial.get(run.data.tags.get("emogen.trial_id", ""))
        if row is None:
            continue
        client.set_tag(run.info.run_id, "emogen.stopped", row["stopped"])
        if run.info.status == "RUNNING" or (row["status"] == "ERROR") != (run.info.status == "FAILED"):
            client.set_terminated(run.info.run_id, "FAILED" if row["status"] == "ERROR" else "FINISHED")


# ------------------------------------------------------------------------ the CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `emogen tune MODEL` (and tune/sweep.py): one per SweepConfig field, plus
    where Ray runs."""
    add_config_options(p, SweepConfig)
    add_ray_options(p)


def cmd_tune(args: argparse.Namespace) -> dict:
    from emogen.data.features import features_dir
    from emogen.runtime import init_ray

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
