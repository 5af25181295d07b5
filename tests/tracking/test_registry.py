"""Models in MLflow (emogen.tracking.registry): a real `mlflow server` on 127.0.0.1, a tiny
training registered against it, an alias promoted, Ray Serve on the alias, and the
pyfunc's mels equal to the endpoint's for the same request and seed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tests.support import free_ports

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free loopback port, SQLite backend, local artifact root; stopped afterwards."""
    import httpx

    port = free_ports()[0]
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "mlflow server did not start in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def _cli(capsys, *argv: str) -> dict:
    """Run `emogen ARGV` in this process; its summary (the last stdout line) as a dict."""
    from emogen.cli.main import main

    main(list(argv))
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_register_promote_and_serve_by_alias(mlflow_server, tiny_features, tmp_path, ray_session, capsys):
    import httpx
    import mlflow
    import pandas as pd
    import torch
    from ray import serve

    from emogen.tracking.registry import ModelURIError, resolve_model_uri
    from emogen.serving.app import ServeArgs, app

    # train against the server and register (what the README does with the demo)
    trained = _cli(capsys, "train", "vae", "--data", str(tiny_features), "--preset", "tiny", "--epochs", "1",
                   "--storage-path", str(tmp_path / "train"), "--tracking-uri", mlflow_server,
                   "--register-as", "emogen-vae")
    assert trained["registered_model"] == "emogen-vae" and trained["version"] == "1"
    assert trained["model_uri"] == f"runs:/{trained['mlflow_run_id']}/model"
    promoted = _cli(capsys, "models", "promote", "emogen-vae", "1", "--alias", "champion", "--tracking-uri", mlflow_server)
    assert promoted == {"model": "emogen-vae", "alias": "champion", "version": "1", "was": None, "uri": "models:/emogen-vae@champion"}
    listed = _cli(capsys, "models", "list", "emogen-vae", "--tracking-uri", mlflow_server)
    (version,) = listed["versions"]
    assert version["aliases"] == ["champion"] and version["run_id"] == trained["mlflow_run_id"]

    # a URI that does not resolve is named in the error
    with pytest.raises(ModelURIError, match="models:/emogen-vae@staging does not resolve"):
        resolve_model_uri("models:/emogen-vae@staging", mlflow_server)
    # runs:/ resolves to the same checkpoint as the registered version
    by_run = resolve_model_uri(trained["model_uri"], mlflow_server, cache_dir=tmp_path / "cache")
    by_alias = resolve_model_uri("models:/emogen-vae@champion", mlflow_server, cache_dir=tmp_path / "cache")
    assert by_alias.version == "1" and by_alias.state_path.read_bytes() == by_run.state_path.read_bytes()

    # Ray Serve on the alias: /v1/info names the URI and the version it resolved to
    port = free_ports()[0]
    request = {"emotion": "fear", "num_samples": 2, "seed": 7}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app(ServeArgs(checkpoint="models:/emogen-vae@champion", tracking_uri=mlflow_server, num_cpus=0)),
                  name="registry", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        info = httpx.get(f"{base}/v1/info", timeout=60).json()
        assert info["checkpoint"] == "models:/emogen-vae@champion (version 1)", info["error"]
        assert info["registered_model"] == {"uri": "models:/emogen-vae@champion", "name": "emogen-vae", "version": "1",
                                            "run_id": trained["mlflow_run_id"]}
        wav = httpx.post(f"{base}/v1/synthesize", json={"emotion": "anger", "format": "wav"}, timeout=120)
        assert wav.status_code == 200 and wav.content[:4] == b"RIFF"
        served = np.load(io.BytesIO(httpx.post(f"{base}/v1/synthesize", json={**request, "format": "npy"}, timeout=120).content))
    finally:
        serve.shutdown()

    # the pyfunc gives the endpoint's mels for the same request and seed
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/emogen-vae@champion")
    # A clip's floating point depends on the CPU thread count, and the replica computes with one
    # (Ray's OMP_NUM_THREADS for an actor with less than one CPU): the pyfunc runs with as many.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mels = model.predict(pd.DataFrame([request]))
    finally:
        torch.set_num_threads(threads)
    assert mels.shape == served.shape == (2, 128, served.shape[2]) and np.array_equal(mels, served)
    with pytest.raises(Exception, match="emotion"):
        model.predict(pd.DataFrame([{"emotion": "boredom"}]))

    # generate takes the URI too
    out = _cli(capsys, "generate", "--checkpoint", "models:/emogen-vae/1", "--tracking-uri", mlflow_server,
               "--emotion", "sadness", "--num-samples", "1", "--out", str(tmp_path / "wavs"))
    assert len(out["files"]) == 1 and Path(out["files"][0]).exists()


def test_a_stopped_training_ends_its_mlflow_run_as_killed(tiny_features, tmp_path, ray_session):
    """`ray job stop` sends SIGTERM to the job's entrypoint (then SIGKILL 3 s later): the
    training's MLflow run ends as KILLED, with the reason, instead of staying RUNNING."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen(
        [sys.executable, "-m", "emogen.cli", "train", "ser", "--data", str(tiny_features), "--preset", "tiny",
         "--epochs", "200", "--storage-path", str(tmp_path / "train"), "--tracking-uri", uri, "--run-name", "stopped"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    mlflow.set_tracking_uri(uri)
    try:
        deadline = time.time() + 240
        run_id = None
        while time.time() < deadline and driver.poll() is None:  # until an epoch is logged
            try:
                runs = mlflow.search_runs(experiment_names=["emogen"], filter_string="tags.`emogen.run_name` = 'stopped'")
            except Exception:  # the store is being created
                runs = None
            if runs is not None and len(runs) and "metrics.val_loss" in runs and runs["metrics.val_loss"].notna().all():
                run_id = runs["run_id"].iloc[0]
                break
            time.sleep(0.5)
        assert run_id is not None and driver.poll() is None, driver.stderr.read().decode()[-3000:] if driver.poll() is not None else "no epoch in 240 s"
        assert mlflow.get_run(run_id).info.status == "RUNNING"
        # as `ray job stop` does: SIGTERM to the job's process group, SIGKILL 3 s later
        os.killpg(driver.pid, signal.SIGTERM)
        try:
            driver.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    run = mlflow.get_run(run_id)
    assert run.info.status == "KILLED", (run.info.status, run.data.tags.get("emogen.ended_because"))
    assert "SIGTERM" in run.data.tags["emogen.ended_because"]  # ended within the grace period, whatever the exit took


def test_checkpoint_options_take_model_uris_in_the_local_store(tmp_path):
    """No server: the default local SQLite store registers and resolves too; a latent
    diffusion training's --vae-checkpoint takes a models:/ URI (checked and pinned to its
    version at the driver, resolved by each worker), and a runs:/ URI resolves to the
    logged checkpoint."""
    import dataclasses

    import mlflow

    from emogen.tracking import runs as tracking
    from emogen.checkpoint import build_model, load_state, save_state
    from emogen.config import AudioConfig
    from emogen.presets import model_configs
    from emogen.inference.pyfunc import log_checkpoint_model
    from emogen.tracking.registry import ModelURIError, resolve_checkpoint_ref, resolve_model_uri
    from emogen.training.driver import loop_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    vae = dataclasses.asdict(model_configs("tiny")["vae"])
    save_state(tmp_path / "vae", {"model_name": "vae", "configs": {"vae": vae}, "model": build_model("vae", {"vae": vae}).state_dict(),
                                  "best_model": None, "ema_model": None, "audio": dataclasses.asdict(AudioConfig()), "extra": {},
                                  "epoch": 3})
    tracking.configure(uri)
    with mlflow.start_run() as run:
        pass
    logged = log_checkpoint_model(run.info.run_id, tmp_path / "vae", register_as="tiny-vae", tags={"fold": "0"})
    assert logged["version"] == "1" and mlflow.MlflowClient().get_model_version("tiny-vae", "1").tags["fold"] == "0"

    loop, _ = loop_config("diffusion", "tiny", {"diffusion": {"space": "latent"}, "unet": {"in_channels": 4}}, epochs=1,
                          vae_checkpoint="models:/tiny-vae/1", tracking_uri=uri)
    assert loop.vae_source == "models:/tiny-vae/1"
    assert loop.vae_checkpoint == "models:/tiny-vae/1"
    assert load_state(resolve_checkpoint_ref(loop.vae_checkpoint, uri).state_path)["epoch"] == 3
    assert load_state(resolve_model_uri(f"runs:/{run.info.run_id}/model", uri).state_path)["model_name"] == "vae"
    with pytest.raises(ModelURIError, match="models:/tiny-vae/2 does not resolve"):
        resolve_model_uri("models:/tiny-vae/2", uri)
    with pytest.raises(ModelURIError, match="name a version or an alias"):
        resolve_model_uri("models:/tiny-vae", uri)


def test_a_stopped_command_ends_its_runs_and_their_running_children(tmp_path):
    """What the CLI does on SIGTERM: the runs a command created (an experiment's or a
    sweep's parent, RUNNING while its work goes on) and their RUNNING descendants end as
    KILLED with the reason; finished children and runs from earlier commands stay as they are."""
    import mlflow

    from emogen.tracking import runs as tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    earlier = tracking.get_or_create_run("earlier-command", tracking_uri=uri, running=True)
    mark = tracking.runs_mark()
    parent = tracking.get_or_create_run("experiment-x", tracking_uri=uri, running=True)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.get_run(parent).info.experiment_id
    running = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id  # a trial in a Ray task
    grandchild = client.create_run(experiment_id, tags={"mlflow.parentRunId": running}).info.run_id
    finished = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    client.set_terminated(finished, "FINISHED")

    ended = tracking.end_open_runs("KILLED", "stopped: SIGTERM", since=mark)
    assert set(ended) == {parent, running, grandchild}
    status = {run_id: client.get_run(run_id).info.status for run_id in (parent, running, grandchild, finished, earlier)}
    assert status == {parent: "KILLED", running: "KILLED", grandchild: "KILLED", finished: "FINISHED", earlier: "RUNNING"}
    assert client.get_run(running).data.tags["emogen.ended_because"] == "stopped: SIGTERM"
    assert tracking.runs_mark() == mark  # this command's runs are forgotten, the earlier one's kept
