"""The experiment's models in the MLflow model registry: each fold's generators and each fold
and seed's baseline SER, tagged with where they came from and how good they were."""

from __future__ import annotations

from typing import Any

from emogen.experiment.context import ExperimentContext, condition_slug
from emogen.experiment.results import REAL, SER_JUDGE, ExperimentResults
from emogen.inference.pyfunc import log_checkpoint_model
from emogen.logs import get_logger
from emogen.tracking import runs as tracking_runs
from emogen.tracking.registry import register, registered_version

log = get_logger("experiment")


def register_models(ctx: ExperimentContext, results: ExperimentResults) -> list[dict[str, Any]]:
    """Each fold's generators and each fold and seed's baseline SER as versions of
    PREFIX-vae, PREFIX-diffusion and PREFIX-ser, tagged with the experiment, fold, seed
    and their judged clarity / UA. A model already registered from the same run (a
    resumed experiment) is not registered again."""
    tracking_runs.configure(ctx.tracking.uri)
    done = _register_generators(ctx, results) + _register_baseline_sers(ctx, results)
    log.info("registered %d models: %s", len(done), ", ".join(f"{d['model']} v{d['version']}" for d in done))
    return done


def _register_generators(ctx: ExperimentContext, results: ExperimentResults) -> list[dict[str, Any]]:
    """The models fit() logged for each fold's VAE and diffusion U-Net."""
    done = []
    for (fold, generator), summary in sorted(ctx.outputs.generators.items()):
        name, run_id = f"{ctx.config.register_prefix}-{generator}", summary["mlflow_run_id"]
        if registered_version(name, run_id, ctx.tracking.uri):
            continue
        info = results.generated.get(generator)
        tags = {"emogen.experiment": ctx.spec.name, "emogen.fold": str(fold)}
        if info is not None and SER_JUDGE in info.judged:  # over the experiment's folds and seeds
            tags["emogen.clarity_by_ser_judge"] = f"{info.judged[SER_JUDGE].all.mean:.4f}"
        done.append({"model": name, "version": register(summary["model_uri"], name, run_id, tags), **tags})
    return done


def _register_baseline_sers(ctx: ExperimentContext, results: ExperimentResults) -> list[dict[str, Any]]:
    """Each real-only SER, logged as a model of its training's MLflow run (its checkpoint is a folder)."""
    done, name = [], f"{ctx.config.register_prefix}-ser"
    for run in results.runs.get(REAL, []):
        run_name = f"ser-{condition_slug(REAL)}-f{run.fold}-s{run.seed}-{ctx.spec.name}"
        run_id = tracking_runs.find_run(run_name, ctx.tracking.uri)
        if run_id is None or registered_version(name, run_id, ctx.tracking.uri):
            continue
        tags = {"emogen.experiment": ctx.spec.name, "emogen.fold": str(run.fold), "emogen.seed": str(run.seed),
                "emogen.ua": f"{run.metrics.unweighted_accuracy:.4f}"}
        logged = log_checkpoint_model(run_id, run.checkpoint, register_as=name, tags=tags)
        done.append({"model": name, "version": logged["version"], **tags})
    return done
