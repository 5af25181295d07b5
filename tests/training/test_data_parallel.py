"""2-worker data-parallel training (Ray Train, gloo) of the SER, the VAE and latent
diffusion: both ranks ran, hold the same weights when training ends (DDP really
synchronized), latent diffusion's ranks share one latent scale, the one the checkpoint
saves; the run has the epochs asked for and one MLflow run with one entry per epoch.

Each rank records what it ended with (`recording_worker_loop`, a file per rank in the
run's folder); one fit per model, shared by the module's tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from emogen.checkpoint import load_state
from emogen.training import FitConfig, RayTrainSession, fit, run_training

EPOCHS = 2
WORKERS = 2
LATENT = {"diffusion": {"space": "latent"}, "unet": {"in_channels": 4}}


def parameter_digest(parameters: dict[str, Any]) -> str:
    """sha256 over the parameters' names and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(parameters):
        digest.update(name.encode())
        digest.update(parameters[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def recording_worker_loop(config: dict[str, Any]) -> None:
    """train_loop_per_worker, then this rank's record in <run_dir>/rank-<rank>.json: its
    rank and world size, a digest of its final parameters (BatchNorm's running statistics
    are buffers each rank updates from its own batches between DDP's broadcasts, so only
    parameters are compared) and the latent scale its task trained with."""
    worker = run_training(config["loop"], RayTrainSession())
    parameters = dict(worker.learner.unwrapped().named_parameters())
    record = {"rank": worker.rank, "world": worker.world, "parameters": parameter_digest(parameters),
              "names": sorted(parameters), "latent_scale": getattr(worker.learner.task, "latent_scale", None)}
    run_dir = Path(config["loop"].run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"rank-{worker.rank}.json").write_text(json.dumps(record))


def two_worker_fit(model: str, features: Path, root: Path, tracking_uri: str, **kw: Any) -> dict[str, Any]:
    """A 2-worker fit under recording_worker_loop: its summary, checkpoint state and rank records."""
    run_name = f"{model}-dp"
    summary = fit(model, features, FitConfig(preset="tiny", epochs=EPOCHS, num_workers=WORKERS, storage_path=root,
                                             run_name=run_name, tracking_uri=tracking_uri, max_failures=0, **kw),
                  worker_loop=recording_worker_loop)
    records = [json.loads(p.read_text()) for p in sorted((root / run_name).glob("rank-*.json"))]
    return {"summary": summary, "state": load_state(summary["checkpoint"]), "records": records}


@pytest.fixture(scope="module")
def ser_run(ray_session, tiny_features, tracking_uri, tmp_path_factory):
    return two_worker_fit("ser", tiny_features, tmp_path_factory.mktemp("dp-ser"), tracking_uri)


@pytest.fixture(scope="module")
def vae_run(ray_session, tiny_features, tracking_uri, tmp_path_factory):
    return two_worker_fit("vae", tiny_features, tmp_path_factory.mktemp("dp-vae"), tracking_uri)


@pytest.fixture(scope="module")
def latent_run(ray_session, tiny_features, tracking_uri, tmp_path_factory, vae_run):
    return two_worker_fit("diffusion", tiny_features, tmp_path_factory.mktemp("dp-latent"), tracking_uri,
                          overrides=LATENT, vae_checkpoint=vae_run["summary"]["checkpoint"])


def check_synchronized_run(run: dict[str, Any], tracking_uri: str) -> None:
    """Both ranks ran in a world of 2 and ended with the checkpoint's parameters; the run
    has EPOCHS epochs and one MLflow run logging each epoch once."""
    import mlflow

    records, state, summary = run["records"], run["state"], run["summary"]
    assert sorted(r["rank"] for r in records) == list(range(WORKERS)) and {r["world"] for r in records} == {WORKERS}
    saved = parameter_digest({name: state["model"][name] for name in records[0]["names"]})
    assert [r["parameters"] for r in records] == [saved] * WORKERS
    assert summary["epochs_completed"] == EPOCHS and summary["resumed_from"] == []
    assert [h["epoch"] for h in state["history"]] == list(range(1, EPOCHS + 1))

    client = mlflow.tracking.MlflowClient(tracking_uri)
    run_info = client.get_run(summary["mlflow_run_id"])
    named = client.search_runs([run_info.info.experiment_id], f"tags.`emogen.run_name` = '{summary['run_name']}'")
    assert [r.info.run_id for r in named] == [summary["mlflow_run_id"]]
    assert run_info.data.params["num_workers"] == str(WORKERS)
    for metric in ("train_loss", "epoch"):
        assert [m.step for m in client.get_metric_history(summary["mlflow_run_id"], metric)] == list(range(1, EPOCHS + 1))


def test_ser_ranks_stay_synchronized(ser_run, tracking_uri):
    check_synchronized_run(ser_run, tracking_uri)
    assert ser_run["state"]["model_name"] == "ser"


def test_vae_ranks_stay_synchronized(vae_run, tracking_uri):
    check_synchronized_run(vae_run, tracking_uri)
    assert vae_run["state"]["model_name"] == "vae"


def test_latent_diffusion_ranks_share_one_latent_scale(latent_run, tracking_uri):
    check_synchronized_run(latent_run, tracking_uri)
    saved = latent_run["state"]["extra"]["latent_scale"]
    assert latent_run["state"]["extra"]["vae"] is not None and saved > 0
    assert [r["latent_scale"] for r in latent_run["records"]] == [saved] * WORKERS
