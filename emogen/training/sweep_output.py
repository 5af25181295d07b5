"""What a sweep writes: the results table (results.csv, the log), the best trial's config
(best_config.json, an overrides file of `emogen train`), and its MLflow runs (the parent
run of the sweep, the trials' child runs ended as their trials did, the best trial's model)."""

from __future__ import annotations

import csv
import json
import math
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.tracking import MlflowClient

from emogen import storage
from emogen.inference.pyfunc import log_checkpoint_model
from emogen.logs import get_logger
from emogen.tracking import runs as tracking
from emogen.tracking.registry import registered_version
from emogen.training.config import TrialSetup
from emogen.training.spaces import couple

log = get_logger("tune")


def write_outputs(results: Any, setup: TrialSetup, metric: str, mode: str, sweep_dir: str | Path,
                  register_as: str | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Everything a finished (or restored) sweep writes into its folder (local or on object
    storage); returns its table rows and best trial."""
    rows = results_table(results, metric, mode, setup.epochs)
    with local_outputs(sweep_dir) as out_dir:
        write_csv(rows, out_dir / "results.csv")
        log.info("%d trials:\n%s", len(rows), format_table(rows, metric))
        best = write_best_config(results, rows, setup, metric, mode, out_dir)
        close_runs(setup, rows)
        if best is not None:
            best["model"] = log_best_model(results, best, setup, metric, register_as)
        log_sweep(setup, out_dir, str(sweep_dir), rows, best, metric)
    return rows, best


@contextmanager
def local_outputs(sweep_dir: str | Path) -> Iterator[Path]:
    """A local folder to write the outputs in (MLflow logs artifacts from local files): the
    sweep's own, or for a sweep on object storage a temporary one whose files are
    uploaded into the sweep's folder at the end, each as one object."""
    if not storage.is_uri(sweep_dir):
        folder = storage.local_path(sweep_dir)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="emogen-sweep-") as tmp:
        yield Path(tmp)
        for written in sorted(Path(tmp).iterdir()):
            storage.upload(written, storage.join(sweep_dir, written.name))


# ------------------------------------------------------------------ the table


def trial_id(result: Any) -> str:
    found = (result.metrics or {}).get("trial_id")
    if found:
        return str(found)
    match = re.search(r"_([0-9a-f]{5}_\d{5})", Path(result.path).name) if result.path else None
    return match.group(1) if match else Path(str(result.path)).name


def results_table(results: Any, metric: str, mode: str, epochs: int) -> list[dict[str, Any]]:
    """One row per trial: trial, status, epochs, the metric (best over epochs and last),
    how it stopped, and the sampled params (flattened)."""
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
        row = {"trial": trial_id(result), "status": status, "epochs": done, f"best_{metric}": best,
               f"last_{metric}": values[-1] if values else math.nan, "stopped": stopped,
               "error": "" if result.error is None else _error_text(result.error)}
        row.update({f"param.{k}": v for k, v in tracking.flatten(trial_config(result)).items()})
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def trial_config(result: Any) -> dict[str, Any]:
    """A trial's sampled config; a restored errored trial may come back without it, so
    fall back to the params.json Tune wrote in the trial directory (local or remote)."""
    if result.config:
        return result.config
    try:
        return json.loads(storage.read_text(storage.join(storage.uri_of(result.filesystem, result.path), "params.json")))
    except (OSError, TypeError, ValueError):  # StorageError is an OSError
        return {}


def _error_text(error: BaseException) -> str:
    """The root cause's last line (Tune wraps the trial's exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
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


def write_best_config(results: Any, rows: list[dict[str, Any]], setup: TrialSetup, metric: str, mode: str,
                      out_dir: Path) -> dict[str, Any] | None:
    """The best trial that did not fail ({"trial", metric, "config"}), its config written
    to best_config.json with a best_metric key; None when every trial failed."""
    ok = [r for r in rows if r["status"] != "ERROR" and not math.isnan(r[f"best_{metric}"])]
    if not ok:
        return None
    pick = min if mode == "min" else max
    best_row = pick(ok, key=lambda r: r[f"best_{metric}"])
    config = next((trial_config(r) for r in results if trial_id(r) == best_row["trial"]), {})
    best_config = couple(setup.model, setup.preset, config)
    best_config["best_metric"] = {"name": metric, "mode": mode, "value": best_row[f"best_{metric}"],
                                  "trial": best_row["trial"]}
    (out_dir / "best_config.json").write_text(json.dumps(best_config, indent=2, sort_keys=True) + "\n")
    return {"trial": best_row["trial"], metric: best_row[f"best_{metric}"], "config": best_config}


# ------------------------------------------------------------------ MLflow


def parent_run(name: str, tracking_uri: str | None, params: dict[str, Any]) -> tuple[str, str]:
    """The sweep's MLflow run (found again on resume) and its experiment: (run id, experiment id)."""
    experiment_id = tracking.configure(tracking_uri)
    run_id = tracking.get_or_create_run(name, {"emogen.sweep": name, "emogen.kind": "sweep"}, params, tracking_uri,
                                        running=True)  # until the sweep's summary ends it
    return run_id, experiment_id


def close_runs(setup: TrialSetup, rows: list[dict[str, Any]]) -> None:
    """Child runs end as their trials did (a trial Tune stopped never ends its own run)."""
    client = MlflowClient(setup.tracking_uri)
    by_trial = {r["trial"]: r for r in rows}
    for run in client.search_runs([setup.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{setup.parent_run_id}'",
                                  max_results=5000):
        row = by_trial.get(run.data.tags.get("emogen.trial_id", ""))
        if row is None:
            continue
        client.set_tag(run.info.run_id, "emogen.stopped", row["stopped"])
        if run.info.status == "RUNNING" or (row["status"] == "ERROR") != (run.info.status == "FAILED"):
            client.set_terminated(run.info.run_id, "FAILED" if row["status"] == "ERROR" else "FINISHED")


def log_best_model(results: Any, best: dict[str, Any], setup: TrialSetup, metric: str,
                   register_as: str | None) -> dict[str, Any] | None:
    """The best trial's final checkpoint as an MLflow model of its run (registered as a new
    version of `register_as`, tagged with the sweep and its score), unless it was already."""
    result = next((r for r in results if trial_id(r) == best["trial"]), None)
    checkpoint = result.checkpoint if result is not None else None
    if checkpoint is None or not storage.is_dir(storage.uri_of(checkpoint.filesystem, checkpoint.path)):
        log.warning("the best trial %s has no checkpoint left in the sweep's storage: its model is not logged", best["trial"])
        return None
    client = MlflowClient(setup.tracking_uri)
    runs = client.search_runs([setup.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{setup.parent_run_id}' and "
                                                                   f"tags.`emogen.trial_id` = '{best['trial']}'")
    if not runs:
        return None
    run_id = runs[0].info.run_id
    if register_as and registered_version(register_as, run_id, setup.tracking_uri):
        return {"model_uri": f"runs:/{run_id}/model", "registered_model": register_as}  # a re-run of a finished sweep
    tags = {"emogen.sweep": setup.name, f"emogen.best_{metric}": f"{best[metric]:.6g}"}
    with checkpoint.as_directory() as local:  # the folder itself, or a download of a remote one
        return log_checkpoint_model(run_id, local, register_as, tags=tags)


def log_sweep(setup: TrialSetup, out_dir: Path, sweep_dir: str, rows: list[dict[str, Any]], best: dict[str, Any] | None,
              metric: str) -> None:
    """The sweep's outputs on its parent run: the table, the best config and score, trial
    counts; out_dir holds the files (local_outputs), sweep_dir is where they go."""
    with mlflow.start_run(run_id=setup.parent_run_id):
        mlflow.log_artifact(str(out_dir / "results.csv"))
        if best is not None:
            mlflow.log_artifact(str(out_dir / "best_config.json"))
            mlflow.log_metric(f"best_{metric}", best[metric])
            mlflow.set_tag("emogen.best_trial", best["trial"])
        mlflow.log_metrics({"trials": len(rows), "trials_error": sum(r["status"] == "ERROR" for r in rows),
                            "trials_stopped_by_asha": sum(r["stopped"] == "asha" for r in rows)})
        mlflow.set_tag("emogen.sweep_dir", sweep_dir)
