"""Rehearse the cluster on one machine: a Ray head with no CPUs and worker nodes of their
own (ports, temp dir, CPUs), an S3 API server on 127.0.0.1 as the only storage the nodes
share, and the tiny experiment submitted with `ray job submit`, as on a real
cluster. Everything it started is stopped at the end, also on Ctrl-C or a failure; it
never runs `ray stop` (which stops every Ray instance on the machine).

    make cluster-demo
    .venv/bin/python scripts/cluster_demo.py --out runs/cluster-demo --workers 2 --cpus-per-worker 1

The report and the MLflow store are local (under --out): the job's driver runs on the
head, which is this machine. The experiment's storage (s3://emogen-demo/...) lives in the
S3 server and goes with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's ray, emogen and moto_server: the job's `python` is the venv's too
BUCKET = "emogen-demo"
MARKER = ".cluster-demo"  # marks an --out folder this script made, so a re-run may replace it
# Keys of the loopback S3 server only (moto accepts any); never a developer's own.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "emogen-demo", "AWS_SECRET_ACCESS_KEY": "emogen-demo-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
HEAD_PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port")
NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open while choosing, so no repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass
class NodeSpec:
    """One `ray start --block` of the cluster: the head (address None) or a worker node."""

    name: str
    temp_dir: Path
    ports: dict[str, int]
    num_cpus: int
    object_store_bytes: int
    address: str | None = None  # the head's GCS address, for a worker node

    @property
    def resource(self) -> str:
        return f"emogen-demo-{self.name}"

    def command(self) -> list[str]:
        head = ["--head", "--dashboard-host", "127.0.0.1"] if self.address is None else ["--address", self.address]
        return [str(BIN / "ray"), "start", *head, "--block", "--num-cpus", str(self.num_cpus), "--object-store-memory", str(self.object_store_bytes),
                "--temp-dir", str(self.temp_dir),
                # a resource no task asks for: names the node in Ray's state API (its IP is everyone's)
                "--resources", json.dumps({self.resource: 1}),
                *[arg for flag, port in self.ports.items() for arg in (flag, str(port))]]


def cluster_specs(workers: int, cpus_per_worker: int, object_store_bytes: int) -> list[NodeSpec]:
    """A 0-CPU head (it only schedules and runs the job's driver) and `workers` nodes,
    every one with ports and a temp dir of its own, as separate machines would have."""
    ports = iter(free_ports(len(HEAD_PORT_FLAGS) + len(NODE_PORT_FLAGS) * (1 + workers)))
    # short: Ray's unix sockets live under the temp dir (107-character limit)
    base = Path(tempfile.mkdtemp(prefix="raydemo-", dir="/tmp"))
    head = NodeSpec("head", base / "head", {f: next(ports) for f in HEAD_PORT_FLAGS + NODE_PORT_FLAGS},
                    0, object_store_bytes)
    gcs = f"127.0.0.1:{head.ports['--port']}"
    return [head] + [NodeSpec(f"worker-{i}", base / f"worker-{i}", {f: next(ports) for f in NODE_PORT_FLAGS},
                              cpus_per_worker, object_store_bytes, address=gcs) for i in range(1, workers + 1)]


@dataclass
class Started:
    """What this run started, so it stops exactly that: processes in their own process
    groups (Ctrl-C reaches only this script, which then stops them in order)."""

    nodes: list[tuple[NodeSpec, subprocess.Popen]] = field(default_factory=list)
    s3: subprocess.Popen | None = None

    def node_processes(self) -> list:
        """Every process of these nodes: `ray start`'s descendants (raylet, GCS, dashboard,
        workers, the job's driver) and anything whose command line names a node's temp dir."""
        import psutil  # deferred: a test extra (installed by `make`), and --help needs none of it

        found = {}
        for _, process in self.nodes:
            try:
                root = psutil.Process(process.pid)
                found.update({p.pid: p for p in [root, *root.children(recursive=True)]})
            except psutil.NoSuchProcess:
                pass
        temp_dirs = [str(spec.temp_dir) for spec, _ in self.nodes]
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(t in arg for arg in (p.info["cmdline"] or []) for t in temp_dirs):
                    found[p.pid] = p
            except psutil.Error:
                pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> list[str]:
        """Workers first, then the head (SIGTERM makes a blocking `ray start` stop what it
        started), whatever of theirs is left is killed; then the S3 server. Returns what had
        to be killed."""
        import psutil  # deferred: a test extra (installed by `make`), and --help needs none of it

        processes = self.node_processes()
        for _, process in reversed(self.nodes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
        _, alive = psutil.wait_procs(processes, timeout=10)
        alive = [p for p in {p.pid: p for p in alive + self.node_processes()}.values() if p.is_running()]
        killed = []
        for p in alive:
            try:
                killed.append(" ".join(p.cmdline())[:120])
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)
        if self.s3 is not None and self.s3.poll() is None:
            os.killpg(self.s3.pid, signal.SIGTERM)
            try:
                self.s3.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.s3.pid, signal.SIGKILL)
                self.s3.wait()
        return killed


def start_s3(started: Started, port: int, timeout_s: float = 120) -> str:
    endpoint = f"http://127.0.0.1:{port}"
    started.s3 = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if started.s3.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {started.s3.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return endpoint
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {timeout_s:.0f} s")


def start_node(started: Started, spec: NodeSpec, env: dict[str, str], timeout_s: float = 180) -> None:
    spec.temp_dir.mkdir(parents=True, exist_ok=True)
    log_path = spec.temp_dir / "ray-start.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(spec.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    started.nodes.append((spec, process))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`ray start` of the {spec.name} exited with {process.returncode}; see {log_path}")
        if "block forever" in log_path.read_text(errors="replace"):
            return
        time.sleep(1)
    raise RuntimeError(f"the {spec.name} did not start in {timeout_s:.0f} s; see {log_path}")


def wait_for_nodes(dashboard: str, count: int, timeout_s: float = 120) -> list:
    from ray.util.state import list_nodes  # deferred: Ray is heavy to import, and --help needs none of it

    deadline = time.monotonic() + timeout_s
    while True:
        alive = list_nodes(address=dashboard, filters=[("state", "=", "ALIVE")])
        if len(alive) >= count or time.monotonic() > deadline:
            if len(alive) < count:
                raise RuntimeError(f"{len(alive)} of {count} Ray nodes joined in {timeout_s:.0f} s")
            return alive
        time.sleep(1)


def work_per_node(dashboard: str, names: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per node, the tasks and actors that ran there (Ray's state API), split by whether they
    reserved a CPU: the head's are only the 0-CPU kind (the job's driver, coordinators)."""
    from ray.util.state import list_tasks  # deferred: Ray is heavy to import, and --help needs none of it

    counts: dict[str, Counter] = {}
    for task in list_tasks(address=dashboard, limit=10_000, detail=True, raise_on_missing_output=False):
        if task.node_id and task.type in ("NORMAL_TASK", "ACTOR_CREATION_TASK"):
            kind = "with a CPU" if (task.required_resources or {}).get("CPU", 0) > 0 else "0-CPU"
            counts.setdefault(names.get(task.node_id, task.node_id[:8]), Counter())[kind] += 1
    return {node: dict(sorted(c.items())) for node, c in sorted(counts.items())}


def prepare_out(out: Path) -> None:
    """A fresh --out: one this script made earlier is replaced, anything else is refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"{out} exists and was not made by this demo; remove it or pass another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by scripts/cluster_demo.py; replaced by its next run\n")


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    prepare_out(out)
    specs = cluster_specs(args.workers, args.cpus_per_worker, args.object_store_mb * 1024 * 1024)
    head = specs[0]
    dashboard = f"http://127.0.0.1:{head.ports['--dashboard-port']}"
    s3_port = free_ports(1)[0]
    # One environment for every node, set before its `ray start`, so all their workers and
    # the job's driver inherit it, as a cluster node's processes inherit the node's: token
    # auth, the S3 endpoint and keys. RAY_ADDRESS pins each node's workers to this cluster
    # (Ray Train's "current cluster" lookup) when other Ray instances run on the machine.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(S3_KEYS, AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}", RAY_AUTH_MODE="token",
               RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS=f"127.0.0.1:{head.ports['--port']}",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", *S3_KEYS, "AWS_ENDPOINT_URL")})  # this script's state API calls
    # The token every node and client shares, in ~/.ray/auth_token (made once, kept); the
    # command prints it on stdout, which goes nowhere.
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    started = Started()
    submission_id = f"emogen-demo-{uuid.uuid4().hex[:8]}"
    keep_logs = False  # the nodes' logs outlive the demo only when the job failed
    try:
        print(f"S3 API server (moto) on 127.0.0.1:{s3_port} ...", flush=True)
        start_s3(started, s3_port)
        import boto3  # deferred: a test extra (installed by `make`), and --help needs none of it

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        corpus = f"s3://{BUCKET}/corpus"
        subprocess.run([str(BIN / "emogen"), "corpus", "--preset", "tiny", "--out", corpus], env=env, check=True)

        for spec in specs:
            print(f"Ray {spec.name}: {spec.num_cpus} CPUs, temp dir {spec.temp_dir}", flush=True)
            start_node(started, spec, env)
        nodes = wait_for_nodes(dashboard, len(specs))
        names = {n.node_id: spec.name for n in nodes for spec in specs if spec.resource in n.resources_total}
        print(f"cluster up: {len(nodes)} nodes, dashboard and job server on {dashboard}", flush=True)

        experiment = out / "experiment"
        tracking_uri = f"sqlite:///{out / 'mlflow' / 'mlflow.db'}"
        job = ["python", "jobs/augment.py", "--input", corpus, "--storage-path", f"s3://{BUCKET}/experiment",
               "--out", str(experiment), "--preset", "tiny", "--seeds", "0",
               "--ser-epochs", str(args.epochs), "--vae-epochs", str(args.epochs),
               "--diffusion-epochs", str(args.epochs), "--tracking-uri", tracking_uri]
        print("$ ray job submit --address", dashboard, "--working-dir . --", " ".join(job), flush=True)
        submit = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", str(ROOT),
                                 "--submission-id", submission_id, "--", *job], env=env, cwd=ROOT)
        print(f"\ntasks and actors per node: {work_per_node(dashboard, names)}")
        if submit.returncode != 0:
            keep_logs = True
            print(f"job {submission_id} failed (exit {submit.returncode}); node logs in "
                  f"{head.temp_dir.parent}/*/session_latest/logs (kept)", file=sys.stderr)
            return 1
        print(f"report:      {experiment / 'report.html'} (and report.md, results.json)")
        print(f"MLflow runs: mlflow ui --backend-store-uri {tracking_uri}")
        print(f"storage:     s3://{BUCKET}/experiment, in the S3 server, which stops now with the cluster")
        return 0
    finally:
        killed = started.stop()
        print(f"stopped the {len(started.nodes)} Ray nodes and the S3 server"
              + (f"; had to kill {len(killed)} leftover processes" if killed else ""), flush=True)
        if not keep_logs:
            shutil.rmtree(head.temp_dir.parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/cluster-demo"), help="report and MLflow store (replaced on re-run)")
    p.add_argument("--workers", type=int, default=2, help="worker nodes beside the 0-CPU head")
    p.add_argument("--cpus-per-worker", type=int, default=1)
    p.add_argument("--object-store-mb", type=int, default=512, help="object store of each node")
    p.add_argument("--epochs", type=int, default=1, help="epochs of every training (SER, VAE, diffusion)")
    args = p.parse_args(argv)

    def interrupt(signum, frame):  # `kill` stops the demo as Ctrl-C does: through the cleanup
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; everything the demo started is stopped", file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as e:
        print(f"failed: {' '.join(map(str, e.cmd))[:200]} exited with {e.returncode}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
