"""MLflow, configured once.

Default: a local SQLite store under runs/mlflow: no server to run, and a database
rather than the plain file store, which MLflow has retired. `--tracking-uri` (or
MLFLOW_TRACKING_URI) points at a real server instead. Browse the local store with:

    mlflow ui --backend-store-uri sqlite:///runs/mlflow/mlflow.db
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("runs/mlflow")
DEFAULT_EXPERIMENT = "emogen"
# (tracking URI, run id) of every run this process created or resumed: what `end_open_runs`
# ends when the process is stopped (workers that reopened them die without ending them)
_RUNS_OF_THIS_PROCESS: list[tuple[str, str]] = []


def default_tracking_uri(directory: str | Path = DEFAULT_DIR) -> str:
    return f"sqlite:///{Path(directory).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def configure(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the store and experiment; returns the experiment id.

    For the local store, artifacts live beside the database (not in the cwd).
    """
    import mlflow  # deferred: mlflow is heavy to import, and `emogen --help` imports this module

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///") :]).parent / "artifacts").resolve().as_uri()
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts -> {'section.key': value} for mlflow.log_params."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat


def find_run(run_name: str, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """The id of the newest run tagged with this emogen run name, to resume into it."""
    import mlflow  # deferred: mlflow is heavy to import, and `emogen --help` imports this module

    configure(tracking_uri, experiment)
    runs = mlflow.search_runs(
        filter_string=f"tags.`emogen.run_name` = '{run_name}'", order_by=["start_time DESC"], max_results=1
    )
    return None if runs.empty else str(runs["run_id"].iloc[0])


def get_or_create_run(
    run_name: str,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    running: bool = False,
) -> str:
    """The id of the MLflow run named `run_name` (tag `emogen.run_name`): found again when a
    resumed job asks for it, else created with its tags and flattened params, as a child of
    parent_run_id when given. The run is left closed (workers reopen it by id), or with
    `running` marked RUNNING until its owner ends it (an experiment's or a sweep's parent
    run, whose work happens in its children: a stopped job then shows it KILLED)."""
    import mlflow  # deferred: mlflow is heavy to import, and `emogen --help` imports this module

    configure(tracking_uri, experiment)
    found = find_run(run_name, tracking_uri, experiment)
    if found is None:
        all_tags = {"emogen.run_name": run_name, **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
            if params:
                mlflow.log_params(flatten(params))
            found = run.info.run_id
    if running:
        mark_running(found, tracking_uri)
    else:
        _RUNS_OF_THIS_PROCESS.append((resolve_tracking_uri(tracking_uri), found))
    return found


def mark_running(run_id: str, tracking_uri: str | None = None) -> None:
    """Mark a run RUNNING until its owner ends it, as one of this process's runs (see
    `end_open_runs`): an experiment's or a sweep's parent, also when a resumed job takes
    it up again."""
    import mlflow  # deferred: mlflow is heavy to import, and `emogen --help` imports this module

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.MlflowClient(tracking_uri=uri).update_run(run_id, status="RUNNING")
    _RUNS_OF_THIS_PROCESS.append((uri, run_id))


def runs_mark() -> int:
    """Where this process's list of runs stands: `end_open_runs(..., since=mark)` ends only
    the runs a command created after it (a long-lived process runs several commands)."""
    return len(_RUNS_OF_THIS_PROCESS)


def end_open_runs(status: str, reason: str, since: int = 0) -> list[str]:
    """End as `status` (KILLED or FAILED) every run this process created or resumed that is
    still RUNNING, and their RUNNING descendants (an experiment's trainings, a sweep's
    trials: their workers die with this process and never end them), tagged with the
    reason. Returns the ids ended. Called by the CLI when a job is stopped or fails."""
    import mlflow  # deferred: mlflow is heavy to import, and `emogen --help` imports this module

    ended: list[str] = []
    for uri, root in _RUNS_OF_THIS_PROCESS[since:]:
        client = mlflow.MlflowClient(tracking_uri=uri)
        todo = [root]
        while todo:
            run_id = todo.pop()
            try:
                run = client.get_run(run_id)
                if run.info.status == "RUNNING":
                    client.set_tag(run_id, "emogen.ended_because", reason[:500])
                    client.set_terminated(run_id, status)
                    ended.append(run_id)
                children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
            except Exception:  # a store that is gone too: nothing more to end here
                continue
            todo += [child.info.run_id for child in children]
    del _RUNS_OF_THIS_PROCESS[since:]
    return ended
