"""The README's local-head block, run as written on a machine where Ray never ran (an empty
HOME): it generates the token, starts a separate Ray head, writes the tiny corpus and
submits the experiment with `ray job submit`; the job succeeds, the token is in no output,
and this session's Ray survives."""

from __future__ import annotations

import json
import os
import re
import shlex
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
# what the block's lines do, in order: the test runs each one in its place
BLOCK_SHAPE = ["source .venv/bin/activate", "export RAY_AUTH_MODE=token", "ray get-auth-token --generate",
               "emogen corpus ", "ray start --head", "until ray job list ", "ray job submit ", "kill %1"]
PORT_FLAG = re.compile(r"--[\w-]*port (\d+)")


def readme_local_head_block() -> list[str]:
    """The commands of the first bash block under "## On a Ray cluster" in README.md, one
    string each (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## On a Ray cluster\n"):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")]
    commands, current = [], ""
    for line in block.splitlines():
        current = f"{current} {line.strip()}" if current else line.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        current = re.sub(r"\s+#\s.*$", "", current)  # a trailing comment (none of the block's # are inside quotes)
        if current and not current.startswith("#"):
            commands.append(current)
        current = ""
    return commands


class LocalHead:
    """A separate local Ray head (`ray start --head --block` in its own process group),
    stopped without `ray stop`, which would stop every Ray instance on the machine
    (this test session's and other users'): SIGTERM to the blocking `ray start` (what the
    README's `kill %1` sends) makes it shut down the processes it started; anything of ours
    left after that is killed."""

    def __init__(self, command: list[str], env: dict[str, str], temp_dir: Path):
        import psutil

        self.psutil = psutil
        self.command, self.env, self.temp_dir = command, env, temp_dir
        self.log = temp_dir / "ray-start.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=ROOT)
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


def test_the_readme_block_has_the_shape_this_test_runs():
    """Fast guard: the block's lines are the ones the slow test below runs in their order."""
    commands = readme_local_head_block()
    assert len(commands) == len(BLOCK_SHAPE), commands
    for command, expected in zip(commands, BLOCK_SHAPE):
        assert expected in command, (expected, command)
    start = commands[4]
    assert start.endswith(" &") and "--temp-dir /tmp/" in start and len(PORT_FLAG.findall(start)) >= 7, start
    # the token never reaches a terminal or a log
    assert commands[2] == "ray get-auth-token --generate >/dev/null"
    assert not any("cat ~/.ray/auth_token" in c or "RAY_AUTH_TOKEN=" in c for c in commands)
    # paths a job reads or writes are absolute: it runs in the uploaded copy of the project
    submit = commands[6]
    assert "--working-dir ." in submit and '--input "$PWD/' in submit and '--out "$PWD/' in submit
    assert '--tracking-uri "sqlite:///$PWD/' in submit


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(1800)
def test_readme_local_head_block_from_an_empty_home(ray_session, tmp_path):
    """The README's block, commands as written with free ports and temporary paths in place
    of its own and one epoch per training, in an empty HOME: `ray get-auth-token --generate`
    makes the token, `ray start --head` and `ray job submit` find it; jobs/augment.py (tiny
    preset) succeeds and writes its report and MLflow runs; this session's Ray survives."""
    commands = readme_local_head_block()
    assert [e in c for c, e in zip(commands, BLOCK_SHAPE)] == [True] * len(BLOCK_SHAPE), commands
    activate, export, generate, corpus_cmd, start_cmd, wait_cmd, submit_cmd, _kill = commands

    home = tmp_path / "home"  # a machine where Ray never ran: no ~/.ray/auth_token
    home.mkdir()
    # short: Ray's unix sockets live under the temp dir (107-character limit)
    temp_dir = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
    ports = [int(p) for p in re.findall(r"RAY_ADDRESS=[\d.]+:(\d+)", start_cmd) + PORT_FLAG.findall(start_cmd)]
    substitutions = {rf"\b{port}\b": str(free) for port, free in zip(sorted(set(ports)), free_ports(len(set(ports))))}
    substitutions[re.escape(re.search(r"--temp-dir (\S+)", start_cmd).group(1))] = str(temp_dir)
    substitutions[re.escape("$PWD/runs")] = str(tmp_path / "runs")
    venv_bin = Path(sys.executable).parent  # the venv running this test: its `python` is then the job's
    substitutions[re.escape(".venv/bin/activate")] = str(venv_bin / "activate")

    def local(command: str) -> str:
        for pattern, value in substitutions.items():
            command = re.sub(pattern, lambda _: value, command)
        return command

    preamble = f"{local(activate)} && {export}"
    # the block's shell: the token and auth mode come from the block itself, not from this session
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                        "RAY_AUTH_TOKEN_PATH", "VIRTUAL_ENV")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    outputs: dict[str, str] = {}

    def run(name: str, command: str, timeout: float) -> subprocess.CompletedProcess:
        done = subprocess.run(["bash", "-c", f"{preamble} && {command}"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
        outputs[name] = done.stdout + done.stderr
        return done

    done = run("generate", generate, 120)
    assert done.returncode == 0, outputs["generate"]
    token_file = home / ".ray" / "auth_token"
    assert token_file.is_file() and len(token_file.read_text().strip()) >= 32
    done = run("corpus", local(corpus_cmd), 300)
    assert done.returncode == 0, outputs["corpus"]
    corpus = tmp_path / "runs" / "cluster" / "corpus"
    assert any(corpus.rglob("*.wav")), outputs["corpus"]

    # `cmd &` then `kill %1`: here the blocking `ray start` in a process group of its own, then SIGTERM
    start_local = local(start_cmd).removesuffix("&").rstrip()
    assignments, ray_start = re.fullmatch(r"((?:\w+=\S+\s+)*)(ray start .*)", start_local).groups()
    head = LocalHead(["bash", "-c", f"{preamble} && {assignments}exec {ray_start}"], env, temp_dir)
    dashboard = re.search(r"--address (http://\S+)", local(submit_cmd)).group(1)
    submission_id = f"emogen-test-{uuid.uuid4().hex[:8]}"
    session_resources = ray_session.cluster_resources()
    try:
        head.start()
        done = run("wait", f"timeout 180 bash -c {shlex.quote(local(wait_cmd))}", 200)
        assert done.returncode == 0, outputs["wait"]
        # the README's submit, with an id to look the job up by and one epoch per training
        submit = (local(submit_cmd).replace("ray job submit ", f"ray job submit --submission-id {submission_id} ", 1)
                  + " --ser-epochs 1 --vae-epochs 1 --diffusion-epochs 1")
        done = run("submit", submit, 1500)
        run("status", f"ray job status --address {dashboard} {submission_id}", 120)
        logs = run("logs", f"ray job logs --address {dashboard} {submission_id}", 120).stdout
        outputs["ray start"] = head.log.read_text(errors="replace")
        if done.returncode != 0 or f"Job '{submission_id}' succeeded" not in outputs["status"]:
            pytest.fail(f"job {submission_id}: exit {done.returncode}, {outputs['status'][-2000:]}\n{logs[-5000:]}")
        assert re.search(r"Uploading package gcs://\S+\.zip", outputs["submit"]), outputs["submit"][-3000:]

        # no output of the block holds the token (not even on failure: the message names where)
        token = token_file.read_text().strip()
        leaked = sorted(name for name, text in outputs.items() if token in text)
        assert not leaked, f"the auth token appears in the output of: {leaked}"

        # the job's last line is the experiment summary; its files exist
        out = tmp_path / "runs" / "cluster" / "experiment"
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

        # the README's --tracking-uri: the store is on the machine, not in the job's working dir
        tracking_uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow' / 'mlflow.db'}"
        assert f'--tracking-uri "{tracking_uri}"' in submit
        mlflow_client = MlflowClient(tracking_uri=tracking_uri)
        parent_id = results["mlflow"]["parent_run_id"]
        assert "real.unweighted_accuracy.mean" in mlflow_client.get_run(parent_id).data.metrics
        assert len(mlflow_client.search_runs([results["mlflow"]["experiment_id"]],
                                             f"tags.mlflow.parentRunId = '{parent_id}'")) == 7 * results["n_folds"]

        # the uploaded working dir is the project, without .venv or runs/ (.gitignore)
        unpacked = [p for p in (temp_dir / "session_latest" / "runtime_resources" / "working_dir_files").iterdir()
                    if p.is_dir()]
        assert len(unpacked) == 1 and (unpacked[0] / "jobs" / "augment.py").exists()
        assert not (unpacked[0] / ".venv").exists() and not (unpacked[0] / "runs").exists()
        size = sum(p.stat().st_size for p in unpacked[0].rglob("*") if p.is_file())
        assert size < 20_000_000, f"working dir upload of {size} bytes"
    finally:
        killed = head.stop()  # the README's `kill %1`
        print(f"stopped the Ray head in {temp_dir}; had to kill: {killed}")

    assert not head.ours(), "processes of the second Ray head are still running"
    # this session's Ray is untouched
    assert ray_session.cluster_resources().get("CPU") == session_resources.get("CPU") == 2
    assert ray_session.get(ray_session.remote(lambda: 41).remote()) + 1 == 42
