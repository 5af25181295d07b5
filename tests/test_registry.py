"""Models in MLflow (emogen.registry): a real `mlflow server` on 127.0.0.1, a tiny
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
from conftest import free_ports

ROOT = Path(__file__).resolve().parents[1]
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
    from emogen.cli import main

    main(list(argv))
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_register_promote_and_serve_by_alias(mlflow_server, tiny_features, tmp_path, ray_session, capsys):
    import httpx
    import mlflow
    import pandas as pd
    from ray import serve

    from emogen.registry import ModelURIError, resolve_model_uri
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
    mels = model.predict(pd.DataFrame([request]))
    assert mels.shape == served.shape == (2, 128, served.shape[2]) and np.array_equal(mels, served)
    with pytest.raises(Exception, match="emotion"):
        model.predict(pd.DataFrame([{"emotion": "boredom"}]))

    # generate takes the URI too
    out = _cli(capsys, "generate", "--checkpoint", "models:/emogen-vae/1", "--tracking-uri", mlflow_server,
               "--emotion", "sadness", "--num-samples", "1", "--out", str(tmp_path / "wavs"))
    assert len(out["files"]) == 1 and Path(out["files"][0]).exists()
