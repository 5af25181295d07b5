"""The experiment submitted with `ray job submit` to a separate local Ray head (the cluster
path): jobs/augment.py runs the tiny job there, and this session's Ray survives."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from emogen.experiment.results import CONDITIONS
from tests.support import free_ports

ROOT = Path(__file__).resolve().parents[2]


class LocalHead:
    """A separate local Ray head (`ray start --head --block` in its own process group),
    stopped without `ray stop`, which would stop every Ray instance on the machine
    (this test session's and other users'): SIGTERM to the blocking `ray start` makes it
    shut down the processes it started; anything of ours left after that is killed."""

    def __init__(self, ray_exe: Path, env: dict[str, str]):
        import psutil

        self.psutil = psutil
        # short: Ray's unix sockets live under it (107-character limit)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
        ports = free_ports(9)
        self.gcs_port, self.dashboard_port = ports[0], ports[1]
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.command = [
            str(ray_exe), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--num-cpus", "2", "--temp-dir", str(self.temp_dir),
            # every port of its own, so nothing collides with other Ray instances on the machine
            "--ray-client-server-port", str(ports[2]), "--dashboard-agent-listen-port", str(ports[3]),
            "--dashboard-agent-grpc-port", str(ports[4]), "--runtime-env-agent-port", str(ports[5]),
            "--metrics-export-port", str(ports[6]), "--node-manager-port", str(ports[7]),
            "--object-manager-port", str(ports[8]),
        ]
        # Its workers (Ray Train's PlacementGroupCleaner, the train state actor) query the
        # state API of "the local cluster": with several on one machine, RAY_ADDRESS in the
        # head's environment (inherited by every worker) pins it to this one.
        self.env = {**env, "RAY_ADDRESS": self.address}
        self.log = self.temp_dir / "ray-start.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{self.log.read_text()}")
            if "block forever" in self.log.read_text():
                return
            time.sleep(1)
        raise TimeoutError(f"the Ray head did not start in {timeout} s:\n{self.log.read_text()}")

    def ours(self) -> list:
        """The processes of this head: `ray start`'s descendants (raylet, GCS, dashboard,
        workers, job drivers) and anything whose command line names its temp dir."""
        found = {}
        if self.process is not None:
            try:
                root = self.psutil.Process(self.process.pid)
                for p in [root, *root.children(recursive=True)]:
                    found[p.pid] = p
            except self.psutil.NoSuchProcess:
                pass
        for p in self.psutil.process_iter(["cmdline"]):
            try:
                if any(str(self.temp_dir) in arg for arg in (p.info["cmdline"] or [])):
                    found[p.pid] = p
            except self.psutil.Error:
                pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, grace: float = 60) -> list[str]:
        """Stop this head only; returns the processes that had to be killed."""
        processes = self.ours()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _, alive = self.psutil.wait_procs(processes, timeout=10)
        alive = [p for p in {p.pid: p for p in alive + self.ours()}.values() if p.is_running()]
        killed = []
        for p in alive:
            try:
                killed.append(" ".join(p.cmdline())[:120])
                p.kill()
            except self.psutil.Error:
                pass
        self.psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(1800)
def test_augment_job_on_a_separate_ray_head(ray_session, tmp_path):
    """`ray job submit --working-dir .` of jobs/augment.py (tiny preset, 1 seed) to a second
    local Ray head: the job succeeds and writes its report; this session's Ray survives."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from emogen.data.corpus import generate_corpus

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, "tiny", seed=0)
    out = tmp_path / "exp"
    venv_bin = Path(sys.executable).parent
    ray_exe = venv_bin / "ray"  # the venv's, so the job's `python` is the venv's too
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}")
    session_resources = ray_session.cluster_resources()

    head = LocalHead(ray_exe, env)
    submission_id = f"emogen-test-{uuid.uuid4().hex[:8]}"
    client = None
    try:
        head.start()
        submit = subprocess.run(
            [str(ray_exe), "job", "submit", "--address", head.dashboard, "--working-dir", str(ROOT),
             "--submission-id", submission_id, "--no-wait", "--",
             "python", "jobs/augment.py", "--input", str(corpus), "--out", str(out), "--preset", "tiny",
             "--ser-epochs", "1", "--vae-epochs", "1", "--diffusion-epochs", "1",
             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
            env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        upload = re.search(r"Uploading package (gcs://\S+\.zip)", submit.stdout + submit.stderr)
        assert upload, submit.stdout + submit.stderr

        client = JobSubmissionClient(head.dashboard)
        deadline = time.time() + 1200
        status = client.get_job_status(submission_id)
        while not status.is_terminal() and time.time() < deadline:
            time.sleep(10)
            status = client.get_job_status(submission_id)
        logs = client.get_job_logs(submission_id)
        if status != JobStatus.SUCCEEDED:
            print(logs[-20000:])
            pytest.fail(f"job {submission_id} ended {status}: {client.get_job_info(submission_id).message}\n{logs[-5000:]}")

        # the job's last line is the experiment summary; its files exist
        summary = json.loads(logs.strip().splitlines()[-1])
        # each training's epoch line once (Ray Train's print patch doubled them) and no
        # progress bar redrawn into the log (emogen.runtime.init_ray)
        epoch_lines = re.findall(r"\[[^\]\n]+\] epoch \d+/\d+", logs)
        assert epoch_lines and len(epoch_lines) == len(set(epoch_lines)), epoch_lines
        assert "\x1b[A" not in logs and "\r" not in logs
        # nor Ray Train's own lines per report and per checkpoint (emogen.training.loop)
        assert "Checkpoint successfully created" not in logs and "Reporting training result" not in logs
        assert summary["out"] == str(out) and set(summary["unweighted_accuracy"]) == set(CONDITIONS)
        results = json.loads((out / "results.json").read_text())
        assert results["seeds"] == [0] and results["preset"] == "tiny"
        assert results["command"].startswith("emogen experiment --input ")  # the report's "Reproduce" line
        # the CLI's --ser-epochs; the control scales it by real+diffusion's clips per epoch
        runs = results["runs"]
        assert all(r["epochs"] == 1 for c in CONDITIONS if c != "real-matched" for r in runs[c])
        for real, diffused, matched in zip(runs["real"], runs["real+diffusion"], runs["real-matched"]):
            assert matched["epochs"] == max(1, round(diffused["n_train"] / real["n_train"]))
        assert all(r["epochs"] == 1 for g in ("vae", "diffusion") for r in results["generators_per_fold"][g])
        assert (out / "report.html").stat().st_size > 1000 and (out / "report.md").exists()
        assert "preprocess" in results["seconds"] and (out / "data" / "features").is_dir()
        from mlflow.tracking import MlflowClient

        mlflow_client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # the job's own store
        parent_id = results["mlflow"]["parent_run_id"]
        assert "real.unweighted_accuracy.mean" in mlflow_client.get_run(parent_id).data.metrics
        assert len(mlflow_client.search_runs([results["mlflow"]["experiment_id"]],
                                             f"tags.mlflow.parentRunId = '{parent_id}'")) == 7 * results["n_folds"]

        # the uploaded working dir is the project, without .venv or runs/ (.gitignore)
        unpacked = [p for p in (head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files").iterdir()
                    if p.is_dir()]
        assert len(unpacked) == 1 and (unpacked[0] / "jobs" / "augment.py").exists()
        assert not (unpacked[0] / ".venv").exists() and not (unpacked[0] / "runs").exists()
        size = sum(p.stat().st_size for p in unpacked[0].rglob("*") if p.is_file())
        assert size < 20_000_000, f"working dir upload of {size} bytes"
    finally:
        if client is not None:
            try:
                if not client.get_job_status(submission_id).is_terminal():
                    client.stop_job(submission_id)
            except Exception:  # the head may already be gone
                pass
        killed = head.stop()
        print(f"stopped the Ray head in {head.temp_dir}; had to kill: {killed}")

    assert not head.ours(), "processes of the second Ray head are still running"
    # this session's Ray is untouched
    assert ray_session.cluster_resources().get("CPU") == session_resources.get("CPU") == 2
    assert ray_session.get(ray_session.remote(lambda: 41).remote()) + 1 == 42
