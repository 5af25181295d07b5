"""The experiment's MLflow parent run at the end: the headline numbers as metrics, and the
report, its plots and its samples as artifacts."""

from __future__ import annotations

from pathlib import Path

import mlflow

from emogen.experiment.context import condition_slug
from emogen.experiment.results import SCORES, UA, ExperimentResults
from emogen.tracking import runs as tracking_runs


def log_parent_run(results: ExperimentResults, out: Path, tracking_uri: str | None) -> None:
    """Log the results' metrics and the files under out to the parent run (which this ends)."""
    tracking_runs.configure(tracking_uri)
    with mlflow.start_run(run_id=results.mlflow.parent_run_id):
        mlflow.log_metrics(parent_metrics(results))
        for file in ("results.json", "report.md", "report.html"):
            if (out / file).exists():
                mlflow.log_artifact(str(out / file), artifact_path="report")
        for folder in ("plots", "samples"):
            if (out / folder).is_dir():
                mlflow.log_artifacts(str(out / folder), artifact_path=f"report/{folder}")


def parent_metrics(results: ExperimentResults) -> dict[str, float]:
    """Each condition's scores (mean, std) and gains, the probe's scores, each generator's
    quality, and the seconds per stage, under dotted names ("real_diffusion.ua_gain.mean")."""
    metrics = {}
    for condition, scores in results.summary.items():
        for metric, values in scores.items():
            metrics[f"{condition_slug(condition)}.{metric}.mean"] = values.mean
            metrics[f"{condition_slug(condition)}.{metric}.std"] = values.std
    for condition, scores in results.gains.items():
        metrics[f"{condition_slug(condition)}.ua_gain.mean"] = scores[UA].mean
    for condition, scores in results.gains_over_matched.items():
        metrics[f"{condition_slug(condition)}.ua_gain_over_matched.mean"] = scores[UA].mean
    if results.probe is not None:
        metrics.update({f"probe.{score}": results.probe.metrics.score(score) for score in SCORES})
    for gen, info in results.generated.items():
        metrics.update({f"{gen}.clarity": info.clarity.mean, f"{gen}.fid": info.fid.mean,
                        f"{gen}.inception_score": info.inception_score.mean})
        metrics.update({f"{gen}.clarity_by_{judge}": judged.all.mean for judge, judged in info.judged.items()})
        if info.realism is not None:
            metrics.update({f"{gen}.two_sample_accuracy": info.realism.two_sample_accuracy.mean,
                            f"{gen}.silent_frames": info.realism.silent_frames.mean})
    metrics.update({f"seconds.{k}": float(v) for k, v in results.seconds.items()})
    return metrics
