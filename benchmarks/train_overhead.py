"""Ray Train overhead: emogen.training.fit (TorchTrainer, 1 CPU worker) vs a plain torch loop.

Same model (the demo-preset SER ResNet, or the demo VAE with --model vae), same
speaker-independent train/val split of the same preprocessed demo corpus, same
optimizer/LR schedule/gradient clipping/batch size, same number of epochs. The plain
loop reuses emogen.training's Task objects (build, loss, evaluate), so the arithmetic per
batch is identical; what differs is everything Ray Train adds: the worker actor, DDP
wrapping (prepare_model), streaming the shards from Ray Data (decode per batch, local
shuffle buffer), all-reduce of metric sums, the per-epoch checkpoint written through
ray.train.report, and MLflow logging.

Threads: the Ray worker uses whatever torch defaults to inside its 1-CPU actor (Ray sets
OMP_NUM_THREADS for it). TrainConfig has no thread setting, so this script passes fit() a
wrapper of train_loop_per_worker (fit's worker_loop) that records
torch.get_num_threads() inside the worker, and runs the plain loop with the same number.
With --also-threads N the plain loop is timed a second time with N threads (e.g. 2, what
a plain script gets on this machine by default).

Timing:
- Ray Train end to end: the fit() call (split, Ray datasets materialized, MLflow run,
  TorchTrainer start-up, training, checkpoint load). ray.init is excluded.
- Ray Train per epoch: the `seconds` each epoch reports (train + validation), taken from
  the checkpoint's history; and the epoch's whole wall time in the worker, from one epoch's
  MLflow entry to the next (epochs 2..N), which adds the report in between (checkpoint
  upload, and the wait until Ray Train's controller takes the report: it polls its workers
  every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default, 0.25 s as emogen.runtime.init_ray
  sets it). --also-poll-interval S trains once more with the controller polling every S
  seconds (e.g. 2, Ray's default), in the same run.
- Plain loop per epoch: train + validation, same definition. End to end: model build +
  all epochs (mels decoded once beforehand, timed separately).
Steady state = mean over epochs 2..N (epoch 1 includes warm-up in both).

    .venv/bin/python benchmarks/train_overhead.py --epochs 4
    .venv/bin/python benchmarks/train_overhead.py --data /tmp/feat --model vae --epochs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import load_avg, write_result

_WORKER_INFO_FILE = "worker_info.json"


def prepare_data(work: Path) -> Path:
    """Generate + preprocess the demo corpus (needs ray.init first); returns the features dir."""
    from emogen.data.corpus import generate_corpus
    from emogen.data.features import preprocess
    from emogen.data.datasets import build_manifest

    corpus, features = work / "corpus_demo", work / "features_demo"
    t = time.time()
    generate_corpus(corpus, "demo", seed=0, workers=2)
    print(f"corpus generated in {time.time() - t:.1f} s", flush=True)
    t = time.time()
    summary = preprocess(build_manifest([corpus]), features)
    print(f"preprocessed {summary['accepted']} clips in {time.time() - t:.1f} s", flush=True)
    return features


def make_recording_loop(info_path: str):
    """A wrapper around emogen.training.train_loop_per_worker that records the worker's threads."""

    def recording_loop(config):
        # Runs in the worker process (this closure is pickled by value): the loop it wraps
        # is looked up there, by module, not captured.
        import json as _json
        import os as _os
        import time as _time

        import emogen.training.loop as _loop
        import torch as _torch

        with open(info_path, "w") as f:
            _json.dump({
                "torch_threads": _torch.get_num_threads(),
                "torch_interop_threads": _torch.get_num_interop_threads(),
                "OMP_NUM_THREADS": _os.environ.get("OMP_NUM_THREADS"),
                "loop_started_at": _time.time(),
                "pid": _os.getpid(),
            }, f)
        return _loop.train_loop_per_worker(config)

    return recording_loop


def run_ray_train(features: Path, model: str, epochs: int, work: Path) -> dict:
    from emogen.checkpoint import load_state
    from emogen.training import FitConfig, fit

    info_path = str(work / _WORKER_INFO_FILE)
    started = time.time()
    summary = fit(model, features, FitConfig(
        preset="demo", epochs=epochs, num_workers=1,
        storage_path=work / "runs", run_name=f"overhead-{model}-{int(started)}",
        tracking_uri=f"sqlite:///{work / 'mlflow' / 'mlflow.db'}",
    ), worker_loop=make_recording_loop(info_path))
    wall = time.time() - started
    from mlflow.tracking import MlflowClient

    # the loop logs each epoch's metrics to MLflow just before its report: the time between
    # two epochs' entries is an epoch's whole wall time, the previous report included
    logged = MlflowClient(summary["tracking_uri"]).get_metric_history(summary["mlflow_run_id"], "epoch")
    stamps = [m.timestamp / 1000 for m in sorted(logged, key=lambda m: m.step)]
    info = json.loads(Path(info_path).read_text())
    history = load_state(summary["checkpoint"])["history"]
    return {
        "wall_s": wall,
        "startup_s": info["loop_started_at"] - started,  # fit() call -> worker loop starts
        "period_s": [b - a for a, b in zip(stamps, stamps[1:])],  # epochs 2..N
        "epoch_s": [h["seconds"] for h in history],
        "final_train_loss": history[-1]["train_loss"],
        "worker": info,
        "split_counts": summary["split_counts"],
    }


def probe_actor_threads() -> int:
    """torch's thread count inside a 1-CPU Ray actor (what the 1-CPU train worker gets)."""
    import ray

    @ray.remote(num_cpus=1)
    class Probe:
        def threads(self) -> int:
            import torch as _torch

            return _torch.get_num_threads()

    actor = Probe.remote()
    try:
        return int(ray.get(actor.threads.remote()))
    finally:
        ray.kill(actor)


def run_plain(features: Path, model: str, epochs: int, threads: int) -> dict:
    """The worker loop without Ray: same Task, optimizer, schedule, clipping and batches."""
    from emogen.data.features import decode_mels, read_features
    from emogen.presets import model_configs
    from emogen.training import MODELS, split_assignment, train_config

    torch.set_num_threads(threads)
    train_cfg = train_config(model, "demo", {"epochs": epochs})
    t = time.time()
    assignment = split_assignment(features, train_cfg)
    table = read_features(features, columns=["clip_id", "label", "mel", "n_mels", "n_frames"])
    split = table["clip_id"].map(assignment)
    data = {}
    for name in ("train", "val"):
        part = table[split == name]
        data[name] = (torch.from_numpy(decode_mels(part)), torch.from_numpy(part["label"].to_numpy(np.int64).copy()))
    load_s = time.time() - t

    started = time.time()
    torch.manual_seed(train_cfg.seed)
    task = MODELS[model].task(model_configs("demo"), train_cfg, {})
    net = task.build()
    optimizer = torch.optim.AdamW(net.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=train_cfg.lr_factor, patience=train_cfg.lr_patience)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    bs = train_cfg.batch_size
    epoch_s, losses = [], []
    for epoch in range(epochs):
        t0 = time.time()
        net.train()
        mel, label = data["train"]
        order = torch.randperm(len(mel), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(mel), bs):
            idx = order[i:i + bs]
            loss, _ = task.loss(net, mel[idx], label[idx], epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), train_cfg.grad_clip)
            optimizer.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        net.eval()
        vmel, vlabel = data["val"]
        sums: dict[str, float] = {}
        for i in range(0, len(vmel), bs):
            for k, v in task.evaluate(net, vmel[i:i + bs], vlabel[i:i + bs], epoch).items():
                sums[k] = sums.get(k, 0.0) + v
        val = task.finalize(sums, len(vmel)) if len(vmel) else {"loss": total / seen}
        plateau.step(val["loss"])
        epoch_s.append(time.time() - t0)
        losses.append(total / max(seen, 1))
        print(f"  plain ({threads} thr) epoch {epoch + 1}/{epochs}: {epoch_s[-1]:.2f} s train_loss={losses[-1]:.4f}", flush=True)
    return {
        "threads": threads, "load_s": load_s, "wall_s": time.time() - started, "epoch_s": epoch_s,
        "final_train_loss": losses[-1], "n_train": len(data["train"][0]), "n_val": len(data["val"][0]),
    }


def steady(epoch_s: list[float]) -> float:
    rest = epoch_s[1:] or epoch_s
    return float(np.mean(rest))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="preprocessed features (an `emogen preprocess` output); default: generate the demo corpus")
    parser.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--model", choices=("ser", "vae"), default="ser")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--also-threads", type=int, default=0, help="also time the plain loop with this many threads")
    parser.add_argument("--also-poll-interval", type=float, default=0.0,
                        help="also train with Ray Train's controller polling every this many seconds")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)

    import os

    import ray

    from emogen.runtime import init_ray

    work = Path(args.work or tempfile.mkdtemp(prefix="train_overhead_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load_avg()}", flush=True)
    t = time.time()
    init_ray(num_cpus=2)  # as every emogen command starts Ray (its Ray Train settings included)
    init_s = time.time() - t
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        features = Path(args.data) if args.data else prepare_data(work)
        probed = probe_actor_threads()
        print(f"a 1-CPU Ray actor uses {probed} torch thread(s); plain loop before Ray Train (Ray idle):", flush=True)
        before = run_plain(features, args.model, args.epochs, probed)
        print(f"Ray Train fit, {args.model}, {args.epochs} epochs, 1 worker ...", flush=True)
        ray_res = run_ray_train(features, args.model, args.epochs, work)
        other_poll = None
        if args.also_poll_interval:
            print(f"Ray Train fit again, the controller polling every {args.also_poll_interval} s ...", flush=True)
            default_poll = os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]
            os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(args.also_poll_interval)  # passed on to the controller
            try:
                other_poll = run_ray_train(features, args.model, args.epochs, work)
            finally:
                os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = default_poll
    finally:
        ray.shutdown()
    print(f"load average after Ray Train: {load_avg()}", flush=True)

    threads = int(ray_res["worker"]["torch_threads"])
    if threads != probed:
        print(f"note: the train worker used {threads} threads, the probe actor {probed}; re-running the plain loop with {threads}")
        before = run_plain(features, args.model, args.epochs, threads)
    print("plain loop after Ray Train (Ray shut down):", flush=True)
    after = run_plain(features, args.model, args.epochs, threads)
    plains = [before, after]
    print(f"load average at end: {load_avg()}", flush=True)

    if args.also_threads and args.also_threads != threads:
        plains.append(run_plain(features, args.model, args.epochs, args.also_threads))
    # The plain baseline brackets Ray Train in time: mean of its runs before and after.
    base = {"threads": threads, "n_train": before["n_train"], "n_val": before["n_val"],
            "wall_s": (before["wall_s"] + after["wall_s"]) / 2,
            "epoch_s": [(a + b) / 2 for a, b in zip(before["epoch_s"], after["epoch_s"])], "load_s": before["load_s"]}
    rows = [
        (f"plain loop, {threads} thr, before Ray Train", before["wall_s"], steady(before["epoch_s"]), before["epoch_s"]),
        (f"Ray Train fit, 1 worker ({threads} thr)", ray_res["wall_s"], steady(ray_res["epoch_s"]), ray_res["epoch_s"]),
        (f"plain loop, {threads} thr, after Ray Train", after["wall_s"], steady(after["epoch_s"]), after["epoch_s"]),
        (f"plain loop, {threads} thr, mean of both", base["wall_s"], steady(base["epoch_s"]), base["epoch_s"]),
    ]
    rows += [(f"plain loop, {p['threads']} thr", p["wall_s"], steady(p["epoch_s"]), p["epoch_s"]) for p in plains[2:]]
    print()
    print(f"model {args.model} (demo preset), {args.epochs} epochs, {base['n_train']} train / {base['n_val']} val clips, batch 16")
    print(f"Ray worker: torch threads {threads}, OMP_NUM_THREADS={ray_res['worker']['OMP_NUM_THREADS']}; "
          f"ray.init {init_s:.1f} s (excluded); fit() call -> worker loop start {ray_res['startup_s']:.1f} s")
    print(f"{'run':<44} {'end-to-end s':>12} {'steady s/epoch':>15} {'vs plain':>9}  per-epoch s")
    for name, wall, st, eps in rows:
        print(f"{name:<44} {wall:>12.1f} {st:>15.2f} {st / steady(base['epoch_s']):>8.2f}x  "
              + ", ".join(f"{e:.1f}" for e in eps))
    ratio_epoch = steady(ray_res["epoch_s"]) / steady(base["epoch_s"])
    ratio_wall = ray_res["wall_s"] / base["wall_s"]
    plain_epoch = steady(base["epoch_s"])
    period = float(np.mean(ray_res["period_s"]))
    ratio_loop = period / plain_epoch
    poll = os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]
    print(f"per-epoch ratio (steady, epochs 2..N, as the epochs report it) {ratio_epoch:.3f}x")
    print(f"epoch wall time incl. its report (epochs 2..N), controller polling every {poll} s: {period:.2f} s vs plain "
          f"{plain_epoch:.2f} s = {ratio_loop:.3f}x (target <= 1.15x: {'met' if ratio_loop <= 1.15 else 'missed'})")
    other_period = float(np.mean(other_poll["period_s"])) if other_poll else None
    if other_poll:
        print(f"epoch wall time incl. its report, polling every {args.also_poll_interval} s: "
              f"{other_period:.2f} s = {other_period / plain_epoch:.3f}x")
    print(f"end-to-end ratio {ratio_wall:.2f}x (includes {ray_res['startup_s']:.1f} s fixed start-up)")
    result = {
        "benchmark": "train_overhead", "model": args.model, "epochs": args.epochs,
        "threads": threads, "ray_init_s": round(init_s, 2),
        "ray_wall_s": round(ray_res["wall_s"], 2), "ray_startup_s": round(ray_res["startup_s"], 2),
        "ray_epoch_s": [round(x, 2) for x in ray_res["epoch_s"]],
        "plain_wall_s": round(base["wall_s"], 2), "plain_epoch_s": [round(x, 2) for x in base["epoch_s"]],
        "plain_load_s": round(base["load_s"], 2),
        "ratio_epoch_steady": round(ratio_epoch, 3), "ratio_end_to_end": round(ratio_wall, 3),
        "poll_interval_s": float(poll), "ray_epoch_period_s": [round(x, 3) for x in ray_res["period_s"]],
        "ratio_epoch_period": round(ratio_loop, 3),
        "other_poll": None if not other_poll else {
            "poll_interval_s": args.also_poll_interval, "epoch_period_s": [round(x, 3) for x in other_poll["period_s"]],
            "ratio_epoch_period": round(other_period / plain_epoch, 3), "wall_s": round(other_poll["wall_s"], 2)},
        "plain_before_epoch_s": [round(x, 2) for x in before["epoch_s"]], "plain_after_epoch_s": [round(x, 2) for x in after["epoch_s"]],
        "extra_plain": [{"threads": p["threads"], "wall_s": round(p["wall_s"], 2), "epoch_s": [round(x, 2) for x in p["epoch_s"]]} for p in plains[2:]],
        "n_train": base["n_train"], "n_val": base["n_val"], "load_avg_end": load_avg(),
    }
    write_result(result, args.json_out)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
