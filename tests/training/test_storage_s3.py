"""Checkpoints on object storage, against the loopback S3 server: `emogen train` with
`--storage-path s3://...` (a VAE, then a latent diffusion whose --vae-checkpoint is the VAE's
s3:// run folder), `emogen generate` and the service from an s3:// checkpoint, a re-run by
name that resumes from the bucket, an in-process training (an experiment's SER task) whose
run folder is on s3 and that resumes after its task is lost, and a missing s3:// checkpoint
as one line. No local path between the stages: every checkpoint goes through the bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import emogen

from emogen import storage
from emogen.checkpoint import load_state

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train_root(s3_bucket):
    return f"{s3_bucket}/train"


@pytest.fixture(scope="module")
def vae_run(tiny_features, tracking_uri, train_root):
    """`emogen train vae` for one epoch with its checkpoints in the bucket."""
    return emogen("train", "vae", "--data", tiny_features, "--preset", "tiny", "--epochs", "1", "--storage-path", train_root,
                  "--run-name", "vae-s3", "--tracking-uri", tracking_uri)


@pytest.fixture(scope="module")
def latent_run(tiny_features, tracking_uri, train_root, vae_run, tmp_path_factory):
    """`emogen train diffusion` in latent space on the VAE named by its s3:// run folder."""
    config = tmp_path_factory.mktemp("latent") / "latent.json"
    config.write_text(json.dumps({"diffusion": {"space": "latent"}, "unet": {"in_channels": 4}}))
    return emogen("train", "diffusion", "--data", tiny_features, "--preset", "tiny", "--epochs", "1", "--config", config,
                  "--storage-path", train_root, "--run-name", "latent-s3", "--vae-checkpoint", f"{train_root}/vae-s3",
                  "--tracking-uri", tracking_uri)


def test_train_writes_checkpoints_to_s3_and_names_them_by_uri(vae_run, train_root, tracking_uri):
    import mlflow

    checkpoint = vae_run["checkpoint"]
    assert checkpoint.startswith(f"{train_root}/vae-s3/checkpoint_"), checkpoint  # a location a user passes back
    assert storage.is_file(storage.join(checkpoint, "state.pt"))
    assert load_state(checkpoint)["epoch"] == 1 and vae_run["epochs_completed"] == 1 and vae_run["resumed_from"] == []
    tags = mlflow.MlflowClient(tracking_uri).get_run(vae_run["mlflow_run_id"]).data.tags
    assert tags["emogen.checkpoint"] == checkpoint


def test_latent_diffusion_reads_its_vae_from_an_s3_run_folder(latent_run, vae_run, train_root):
    from emogen.training import loop_config

    # the driver checks the reference and pins it to the VAE run's newest state.pt, by its
    # URI: each worker fetches that file into its own node's cache
    loop, _ = loop_config("diffusion", "tiny", {"diffusion": {"space": "latent"}, "unet": {"in_channels": 4}},
                          vae_checkpoint=f"{train_root}/vae-s3")
    assert loop.vae_checkpoint == storage.join(vae_run["checkpoint"], "state.pt")
    assert loop.vae_source == f"{train_root}/vae-s3"
    state = load_state(latent_run["checkpoint"])
    assert latent_run["checkpoint"].startswith(f"{train_root}/latent-s3/checkpoint_")
    assert state["extra"]["vae"] is not None and state["extra"]["latent_scale"] > 0  # the VAE the worker fetched


def test_generate_from_an_s3_run_folder_writes_wavs(latent_run, train_root, tmp_path):
    import soundfile as sf

    summary = emogen("generate", "--checkpoint", f"{train_root}/latent-s3", "--emotion", "fear", "--num-samples", "2",
                     "--steps", "2", "--out", tmp_path / "wav")
    assert summary["model"] == "diffusion" and sorted(Path(f).name for f in summary["files"]) == ["fear_0_0.wav", "fear_0_1.wav"]
    data, sr = sf.read(tmp_path / "wav" / "fear_0_0.wav")
    assert sr == 22050 and data.shape == (88200,) and abs(data).max() > 0


def test_serve_from_an_s3_checkpoint(latent_run, train_root):
    """A replica built as Ray Serve builds one (constructor, then its ASGI app), from the
    s3:// run folder, answers a synthesis request; responses name the checkpoint by its
    last two folders, never the bucket."""
    from fastapi.testclient import TestClient

    from emogen.serving.app import EmoGenService, ServeArgs

    service = EmoGenService.func_or_class.__mro__[1]  # the class under Serve's ASGI wrapper
    args = ServeArgs.model_validate({"checkpoint": f"{train_root}/latent-s3/", "griffin_lim_iters": "2",
                                     "num_gpus": "0"}).for_replicas()
    assert args.checkpoint == f"{train_root}/latent-s3"
    replica = service(args)
    assert replica.error is None, replica.error
    with TestClient(replica.__serve_build_asgi_app__()) as client:
        assert client.get("/healthz").json() == {"status": "ok", "model": "diffusion"}
        info = client.get("/v1/info").json()
        assert info["checkpoint"] == "train/latent-s3" and "s3://" not in json.dumps(info)
        reply = client.post("/v1/synthesize", json={"emotion": "anger", "num_samples": 1, "steps": 2, "seed": 3, "format": "wav"})
        assert reply.status_code == 200 and reply.headers["content-type"] == "audio/wav" and reply.content[:4] == b"RIFF"
    missing = service(ServeArgs(checkpoint=f"{train_root}/no-run").for_replicas())  # answers 503 with the reason
    assert missing.generator is None and "no checkpoint at train/no-run" in missing.error
    bucket = train_root.split("://")[1].split("/")[0]
    assert bucket not in missing.error
    no_bucket = service(ServeArgs(checkpoint="s3://emogen-no-such-bucket/train/run"))
    assert no_bucket.error.startswith("model failed to load from 'train/run'") and "emogen-no-such-bucket" not in no_bucket.error


def test_a_missing_s3_checkpoint_is_one_line(s3_bucket, tmp_path, capsys):
    done = subprocess.run([sys.executable, "-m", "emogen.cli", "generate", "--checkpoint", f"{s3_bucket}/train/no-run",
                           "--out", str(tmp_path)], cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == f"emogen: error: no checkpoint at {s3_bucket}/train/no-run"
    with pytest.raises(SystemExit) as stopped:  # no such bucket: the storage's own reason, on one line
        emogen("generate", "--checkpoint", "s3://emogen-no-such-bucket/run", "--out", tmp_path)
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("emogen: error: s3://emogen-no-such-bucket/run: ") and "bucket" in line.lower()


class TaskLost(Exception):
    """What the simulated lost task dies of."""


def test_an_in_process_training_on_s3_resumes_where_a_lost_task_stopped(tiny_features, s3_bucket, tmp_path, monkeypatch):
    """An experiment's SER trains as a plain Ray task (train_in_process, DirectorySession)
    with its run folder on s3: every epoch's state.pt is uploaded, so a retried task on
    another node (here: a fresh node cache) continues from the last epoch."""
    from emogen.training import DirectorySession, loop_config, run_training, split_assignment, split_datasets, train_config
    from emogen.training import train_in_process

    class LostAfterFirstEpoch(DirectorySession):
        def report(self, metrics, checkpoint_dir=None):
            super().report(metrics, checkpoint_dir)
            raise TaskLost(f"lost after epoch {metrics['epoch']}")

    run_dir = f"{s3_bucket}/experiment/ser-fold0"
    datasets = split_datasets(tiny_features, split_assignment(tiny_features, train_config("ser", "tiny")))
    loop, _ = loop_config("ser", "tiny", epochs=2)
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "first-node"))
    with pytest.raises(TaskLost, match="after epoch 1"):
        run_training(loop, LostAfterFirstEpoch(datasets, run_dir))
    assert load_state(run_dir)["epoch"] == 1 and storage.list_files(run_dir) == [f"{run_dir}/state.pt"]

    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "second-node"))  # nothing of the first node's disk
    summary = train_in_process(loop, datasets, run_dir + "/")
    assert summary["checkpoint"] == run_dir and summary["resumed_from"] == [1] and summary["epochs_completed"] == 2
    assert [h["epoch"] for h in load_state(run_dir)["history"]] == [1, 2]
    assert list((tmp_path / "second-node").rglob("state.pt"))  # the retried task fetched the state from the bucket


def test_rerun_with_the_same_storage_path_and_name_resumes_from_s3(vae_run, latent_run, tiny_features, tracking_uri,
                                                                  train_root):
    """Last in this module: it moves the VAE run's newest checkpoint on."""
    again = emogen("train", "vae", "--data", tiny_features, "--preset", "tiny", "--epochs", "2", "--storage-path", train_root,
                   "--run-name", "vae-s3", "--tracking-uri", tracking_uri)
    assert again["epochs_completed"] == 2 and again["resumed_from"] == [1]
    assert again["mlflow_run_id"] == vae_run["mlflow_run_id"] and again["checkpoint"] != vae_run["checkpoint"]
    assert [h["epoch"] for h in load_state(f"{train_root}/vae-s3")["history"]] == [1, 2]


def test_a_sweep_on_s3_writes_its_outputs_there_and_a_rerun_restores_it(tiny_features, s3_bucket, tracking_uri):
    """`emogen tune` with --storage-path s3://...: the trials' checkpoints, results.csv and
    best_config.json in the bucket, the best trial's model logged from its s3 checkpoint,
    and a re-run of the same name restored from the bucket (nothing trained again)."""
    from emogen.training.sweep import SweepConfig, run_sweep

    config = SweepConfig("ser", tiny_features, preset="tiny", space={"train": {"lr": {"grid": [1e-3]}}}, num_samples=1,
                         epochs=1, scheduler="fifo", storage_path=f"{s3_bucket}/tune", name="sweep-s3",
                         tracking_uri=tracking_uri)
    summary = run_sweep(config)
    assert summary["sweep_dir"] == f"{s3_bucket}/tune/sweep-s3" and summary["status"] == {"TERMINATED": 1}
    assert summary["results_csv"] == f"{s3_bucket}/tune/sweep-s3/results.csv"
    assert "param.train.lr" in storage.read_text(summary["results_csv"])
    assert json.loads(storage.read_text(summary["best_config"]))["train"]["lr"] == 1e-3
    assert summary["best"]["model"]["model_uri"].startswith("runs:/")  # logged from the trial's s3 checkpoint
    again = run_sweep(config)
    assert again["mlflow_parent_run_id"] == summary["mlflow_parent_run_id"] and again["status"] == {"TERMINATED": 1}
    import mlflow

    parent = summary["mlflow_parent_run_id"]
    children = mlflow.MlflowClient(tracking_uri).search_runs(
        [mlflow.MlflowClient(tracking_uri).get_run(parent).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 1  # the restored trial kept its run: a fresh sweep would have made a second one
