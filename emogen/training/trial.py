"""One Tune trial of a sweep: the sampled override sections -> the shared training loop.

With one worker (the default) a trial runs the loop in its own process under a
`TuneTrialSession` (reports go to `ray.tune.report`, resume comes from
`ray.tune.get_checkpoint`): no inner Ray Train run, so no second placement group, and when
ASHA stops a trial Tune ends that one actor and its CPUs are free for the next trial.
With more workers a trial drives an inner TorchTrainer whose metrics reach Tune through
`TuneReportCallback`. Each trial has an MLflow child run under the sweep's parent run.
"""

from __future__ import annotations

from typing import Any

import mlflow
import ray.train
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from emogen.tracking import runs as tracking
from emogen.training.config import LoopConfig, MlflowTarget, TrialSetup
from emogen.training.driver import loop_config
from emogen.training.loop import run_training, train_loop_per_worker
from emogen.training.session import SingleProcessSession
from emogen.training.spaces import couple


class TuneTrialSession(SingleProcessSession):
    """Runs the training loop inside a Tune trial: reports and checkpoints go to Tune,
    the datasets are the sweep's materialized splits, one process, no DDP."""

    def get_checkpoint(self) -> Any:
        return tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)


def run_trial(config: dict[str, Any], setup: TrialSetup, datasets: dict[str, Any]) -> None:
    """The function trainable of a sweep: config is the trial's sampled override sections.
    Its MLflow run ends FINISHED, or FAILED with the exception that ends the trial."""
    context = tune.get_context()
    trial_id = context.get_trial_id()
    overrides = couple(setup.model, setup.preset, config)
    run_id = None
    try:
        loop, params = loop_config(setup.model, setup.preset, overrides, setup.epochs, setup.vae_checkpoint,
                                   tracking_uri=setup.tracking_uri)
        run_id = trial_run(setup, trial_id, context.get_trial_name(), params, config)
        loop.mlflow = MlflowTarget(setup.tracking_uri, run_id)
        loop.run_dir = context.get_trial_dir()
        if setup.num_workers <= 1:
            run_training(loop, TuneTrialSession(datasets, setup.use_gpu))
        else:
            _run_multi_worker(loop, setup, trial_id, datasets)
    except BaseException:
        if run_id is not None:
            _end_run(setup, run_id, "FAILED")
        raise
    _end_run(setup, run_id, "FINISHED")


def _end_run(setup: TrialSetup, run_id: str, status: str) -> None:
    """End the trial's run: the active one the loop started (one worker), else by id."""
    if mlflow.active_run() is not None:
        mlflow.end_run(status)
    else:
        MlflowClient(setup.tracking_uri).set_terminated(run_id, status)


def trial_run(setup: TrialSetup, trial_id: str, trial_name: str, params: dict[str, Any], sampled: dict[str, Any]) -> str:
    """The trial's MLflow run under the sweep's parent; found again when a trial resumes."""
    client = MlflowClient(setup.tracking_uri)
    found = client.search_runs(
        [setup.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{setup.parent_run_id}' and tags.`emogen.trial_id` = '{trial_id}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        setup.experiment_id,
        run_name=f"{setup.name}/{trial_id}",
        tags={"mlflow.parentRunId": setup.parent_run_id, "emogen.trial_id": trial_id,
              "emogen.trial_name": trial_name, "emogen.sweep": setup.name, "emogen.model": setup.model},
    )
    flat = {**tracking.flatten(params), **{f"sampled.{k}": v for k, v in tracking.flatten(sampled).items()}}
    items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def _run_multi_worker(loop: LoopConfig, setup: TrialSetup, trial_id: str, datasets: dict[str, Any]) -> None:
    """A data-parallel trial: an inner TorchTrainer, metrics to Tune by TuneReportCallback.
    Named by trial id, so a restored sweep resumes it from its own checkpoints."""
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop},
        scaling_config=ray.train.ScalingConfig(num_workers=setup.num_workers, use_gpu=setup.use_gpu,
                                               resources_per_worker=setup.resources_per_worker),
        run_config=ray.train.RunConfig(
            name=f"{setup.name}-{trial_id}",
            storage_path=setup.train_storage,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
        datasets=datasets,
    )
    trainer.fit()
