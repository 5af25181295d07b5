"""The experiment with no shared disk: the corpus on the loopback S3 server, every task's
work (features, trainings, generated clips) and the resume journal under
`--storage-path s3://...`, only the report in the local --out. The job is killed
(SIGKILL, as a lost driver) partway and resumed by re-running the same command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emogen import storage
from emogen.experiment.results import CONDITIONS, GENERATORS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]


def _command(corpus: str, out: Path, storage_path: str, tracking_uri: str, address: str) -> list[str]:
    return [sys.executable, "-m", "emogen.cli", "experiment", "--input", corpus, "--out", str(out),
            "--storage-path", storage_path, "--preset", "tiny", "--seeds", "0", "--per-emotion", "2",
            "--ser-epochs", "1", "--vae-epochs", "1", "--diffusion-epochs", "1", "--name", "s3-e2e",
            "--tracking-uri", tracking_uri, "--address", address]


def _stages(storage_path: str) -> dict:
    location = storage.join(storage_path, "stages.json")
    return json.loads(storage.read_text(location)) if storage.is_file(location) else {}


@pytest.fixture(scope="module")
def killed_then_resumed(ray_session, s3_bucket, tmp_path_factory):
    """(out, storage path, stages when killed, final stages, the resumed run's summary)."""
    root = tmp_path_factory.mktemp("s3-experiment")
    corpus = f"{s3_bucket}/corpora/tiny"
    made = subprocess.run([sys.executable, "-m", "emogen.cli", "corpus", "--preset", "tiny", "--out", corpus],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    assert len([f for f in storage.list_files(corpus) if f.endswith(".wav")]) == json.loads(made.stdout.splitlines()[-1])["files"]
    out, storage_path = root / "out", f"{s3_bucket}/experiments/tiny"
    command = _command(corpus, out, storage_path, f"sqlite:///{root / 'mlflow.db'}",
                       ray_session.get_runtime_context().gcs_address)
    log = open(root / "first.log", "wb")
    driver = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and driver.poll() is None and "fold0/vae" not in _stages(storage_path):
            time.sleep(0.5)
        assert driver.poll() is None, "the experiment ended before it could be killed:\n" + (root / "first.log").read_text()
        assert "fold0/vae" in _stages(storage_path), "no VAE finished in time:\n" + (root / "first.log").read_text()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        log.close()
    at_kill = _stages(storage_path)
    assert "report" not in at_kill and not (out / "results.json").exists()

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert resumed.returncode == 0, resumed.stdout[-5000:] + resumed.stderr[-5000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    return out, storage_path, at_kill, _stages(storage_path), summary


def test_resumed_run_keeps_what_the_killed_one_finished(killed_then_resumed):
    _, _, at_kill, final, summary = killed_then_resumed
    assert {k: final[k] for k in at_kill} == at_kill  # nothing finished before the kill was redone
    assert set(final) > set(at_kill)
    assert set(summary["unweighted_accuracy"]) == set(CONDITIONS)
    assert "preprocess" not in summary["seconds"]  # the features on storage were reused


def test_work_lives_on_storage_and_the_report_locally(killed_then_resumed):
    out, storage_path, _, final, _ = killed_then_resumed
    results = json.loads((out / "results.json").read_text())
    assert (out / "report.html").stat().st_size > 1000 and (out / "samples").is_dir()
    # nothing a task wrote is on the driver's disk
    assert not (out / "data").exists() and not (out / "train").exists() and not (out / "fold0").exists()
    assert not (out / "stages.json").exists()

    assert storage.list_files(storage.join(storage_path, "data", "features"))
    assert storage.is_file(storage.join(storage_path, "data", "summary.json"))
    for fold in range(results["n_folds"]):
        for gen in GENERATORS:
            assert final[f"fold{fold}/{gen}"]["checkpoint"].startswith(f"{storage_path}/train/")
            generated = final[f"fold{fold}/generated/{gen}/0"]["dir"]
            assert generated.startswith(storage_path) and storage.list_files(storage.join(generated, "features"))
    for condition in CONDITIONS:
        for run in results["runs"][condition]:
            assert run["checkpoint"].startswith(f"{storage_path}/fold{run['fold']}/ser/")
            assert storage.is_file(storage.join(run["checkpoint"], "state.pt"))
