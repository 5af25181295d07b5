"""Load test of the Ray Serve synthesis service, loopback only, bounded in requests and time.

    python benchmarks/serve_load.py                       # trains a tiny latent-diffusion generator first
    python benchmarks/serve_load.py --checkpoint PATH     # any diffusion or VAE checkpoint
    python benchmarks/serve_load.py --before REV          # and the same load on commit REV's code
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 [--api-key K]   # a running server
    python benchmarks/serve_load.py --hostile             # and hostile_load.py's scenarios (also with --url)

In order, in one run:
  0. Griffin-Lim quality: spectral convergence ||S - |STFT(y)|||_F / ||S||_F between the
     target magnitude S (a real demo-corpus mel through the mel pseudo-inverse) and the
     resynthesized wave y, and the time per clip on one thread, per iteration count; the
     smallest count within --quality-tolerance of the most iterations' convergence is the
     one the numbers support as AudioConfig.griffin_lim_iters;
  1. with --before REV: this script's own version at REV (git archive into a temporary
     directory, run there with that commit's emogen against the same checkpoint);
  2. the app on 127.0.0.1:<free port> in a local 2-CPU Ray (one replica, 1 CPU):
     batched (max_batch_size 8, stack_rows 8): concurrency 1, 8 and 32;
     unbatched (max_batch_size 1, stack_rows 1: one request per model call): concurrency 8;
     for format 'npy' (the model's mels) and 'wav' (plus Griffin-Lim);
     with --hostile, after the batched levels: benchmarks/hostile_load.py's scenarios
     (stalled uploads, a long request beside short ones, an abandoned request, a mixed
     valid/invalid load) against that deployment.
With --url, against a running server instead: no training, no Griffin-Lim table, nothing
started; only the batched levels (concurrency 1, 8 and 32, max_batch_size as its /v1/info
reports it), then the hostile scenarios with --hostile. --api-key K is sent as X-API-Key
(and is the key of the server this script starts; default $EMOGEN_API_KEY).
Prints p50/p95 latency, requests/s, clips/s, errors (must be 0) and the batch sizes the
replica formed, as tables and JSON, and the batched / unbatched ratios at concurrency 8;
with --hostile also hostile_load.py's results and targets. Exit status 1 on errors in the
load levels or a failed hostile-load target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from ray import serve

import hostile_load
from common import load_avg, pct
from local_service import checkpoint_or_tiny, local_serve

ROOT = Path(__file__).resolve().parents[1]


def griffin_lim_quality(features: Path, iterations: list[int], clips_per_emotion: int) -> list[dict]:
    """Spectral convergence and seconds per clip of MelInverter per Griffin-Lim iteration
    count, on real mels (the first clips of each emotion), one thread as in a replica."""
    import torch

    from emogen.audio.mel import MelInverter, spectral_convergence
    from emogen.config import AudioConfig
    from emogen.data.features import decode_mels, read_features

    torch.set_num_threads(1)
    table = read_features(features, ["clip_id", "emotion", "mel", "n_mels", "n_frames"])
    mels = decode_mels(table.groupby("emotion", sort=True).head(clips_per_emotion))
    rows = []
    for n_iter in iterations:
        inverter = MelInverter(AudioConfig(), n_iter=n_iter)
        magnitude = inverter.magnitude(mels)
        start = time.perf_counter()
        waves = inverter.griffin_lim(magnitude)
        seconds = (time.perf_counter() - start) / len(mels)
        convergence = spectral_convergence(magnitude, waves)
        rows.append({"iterations": n_iter, "clips": len(mels), "sc_mean": round(convergence.mean().item(), 4),
                     "sc_max": round(convergence.max().item(), 4), "ms_per_clip": round(1000 * seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_before(rev: str, checkpoint: str, args: argparse.Namespace) -> list[dict]:
    """This benchmark as it was at `rev`, on that commit's code, same checkpoint and limits."""
    with tempfile.TemporaryDirectory(prefix="serve-before-") as tree:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        command = [sys.executable, "benchmarks/serve_load.py", "--checkpoint", checkpoint, "--steps", str(args.steps),
                   "--requests-per-worker", str(args.requests_per_worker), "--max-seconds", str(args.max_seconds),
                   "--formats", args.formats]
        env = {**os.environ, "PYTHONPATH": tree}  # that commit's emogen, not this checkout's
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not rows:  # say so and measure this checkout anyway
        print(f"the benchmark at {rev} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}", flush=True)
    for r in rows:
        r["mode"] = f"before {rev}: {r['mode']}"
    return rows


def batch_sizes(info_url: str, before: int, headers: dict | None = None) -> dict:
    """Clips per batch the replica formed since `before` batches (its last 20 at most)."""
    info = httpx.get(info_url, headers=headers, timeout=30).json()
    new = min(20, info["batch_count"] - before)
    sizes = info["recent_batch_sizes"][-new:] if new > 0 else []
    return {"batches_seen": sizes, "batch_mean": round(sum(sizes) / len(sizes), 2) if sizes else None}


def batch_count(info_url: str, headers: dict | None = None) -> int:
    return int(httpx.get(info_url, headers=headers, timeout=30).json()["batch_count"])


async def load(url: str, body: dict, concurrency: int, requests: int, deadline: float, headers: dict | None = None) -> dict:
    latencies, errors, clips = [], 0, 0
    queue = list(range(requests))

    async def worker(client):
        nonlocal errors, clips
        while queue and time.perf_counter() < deadline:
            i = queue.pop()
            t = time.perf_counter()
            try:
                r = await client.post(url, json={**body, "seed": i})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t)
            if ok:
                clips += body.get("num_samples", 1)
            else:
                errors += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, headers=headers, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"requests": len(latencies), "errors": errors, "seconds": round(wall, 2), "p50_s": pct(latencies, 50),
            "p95_s": pct(latencies, 95), "req_per_s": round(len(latencies) / wall, 2), "clips_per_s": round(clips / wall, 2)}


def run_levels(base: str, mode: str, max_batch: int | None, levels: tuple[int, ...], args: argparse.Namespace,
               headers: dict) -> list[dict]:
    """Per format: a warm-up, then `n` requests at each concurrency level against `base`."""
    url, info_url = f"{base}/v1/synthesize", f"{base}/v1/info"
    rows = []
    for fmt in args.formats.split(","):
        body = {"emotion": "fear", "num_samples": 1, "steps": args.steps, "format": fmt}
        asyncio.run(load(url, body, 1, 2, time.perf_counter() + 60, headers))  # warm-up
        for c in levels:
            n = max(16, args.requests_per_worker * c)
            before = batch_count(info_url, headers)
            r = asyncio.run(load(url, body, c, n, time.perf_counter() + args.max_seconds, headers))
            r.update(mode=mode, max_batch_size=max_batch, format=fmt, concurrency=c, **batch_sizes(info_url, before, headers))
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows


def run_hostile(base: str, args: argparse.Namespace) -> dict:
    """benchmarks/hostile_load.py's scenarios against `base` (printed when everything is done)."""
    return asyncio.run(hostile_load.run_all(base, args.api_key, **hostile_load.scenario_kwargs(args)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="load-test this running server (base URL): batched levels only, nothing started")
    p.add_argument("--api-key", default=os.environ.get("EMOGEN_API_KEY"),
                   help="sent as X-API-Key; without --url also the started server's key (default: $EMOGEN_API_KEY)")
    p.add_argument("--hostile", action="store_true", help="also run benchmarks/hostile_load.py's scenarios")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-serve")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--requests-per-worker", type=int, default=8, help="requests = max(16, this x concurrency)")
    p.add_argument("--max-seconds", type=float, default=120, help="per measurement")
    p.add_argument("--griffin-lim-iters", type=int, default=None, help="default: AudioConfig.griffin_lim_iters")
    p.add_argument("--formats", default="npy,wav")
    p.add_argument("--stack-rows", type=int, default=8, help="batched mode: rows per model call")
    p.add_argument("--batch-wait", type=float, default=0.05, help="batched mode: batch_wait_timeout_s")
    p.add_argument("--max-ongoing", type=int, default=None, help="replica max_ongoing_requests (default: the app's)")
    p.add_argument("--before", default=None, metavar="REV", help="also run this benchmark as of commit REV")
    p.add_argument("--quality-features", type=Path, default=ROOT / "runs" / "demo" / "data",
                   help="preprocessed real mels for the Griffin-Lim quality table (default: the demo corpus's; "
                        "the tiny corpus the script builds when absent)")
    p.add_argument("--quality-iters", default="4,8,12,16,24,32,48,64,128", help="empty: skip the quality table")
    p.add_argument("--quality-clips", type=int, default=4, help="clips per emotion in the quality table")
    p.add_argument("--quality-tolerance", type=float, default=0.10,
                   help="chosen count: convergence within this fraction of the most iterations'")
    hostile_load.add_arguments(p)  # the hostile-load scenario options (--sockets, --shorts, ...), used with --hostile
    args = p.parse_args()
    if args.url and args.before:
        p.error("--before measures this script's own server at REV: not with --url")
    headers = {"X-API-Key": args.api_key} if args.api_key else {}

    load_start = load_avg()
    print(f"load average at start: {load_start}", flush=True)
    quality, results, hostile = [], [], None
    if args.url:
        base = args.url.rstrip("/")
        config = httpx.get(f"{base}/v1/info", headers=headers, timeout=30).json().get("config", {})
        results = run_levels(base, "running server", config.get("max_batch_size"), (1, 8, 32), args, headers)
        if args.hostile:
            hostile = run_hostile(base, args)
    else:
        quality, results, hostile = start_and_measure(args, headers)
    load_end = load_avg()
    report(args, quality, results, load_start, load_end)
    failed = []
    if hostile is not None:
        hostile["load_average"] = {"start": load_start, "end": load_end}
        print("\nhostile load:")
        if not hostile_load.report(hostile):
            failed = [r["check"] for r in hostile["summary"] if not r["ok"]]
        print(f"load average: {load_start} at start, {load_end} at end")
    if any(r["errors"] for r in results):
        raise SystemExit("errors during the load test")
    if failed:
        raise SystemExit(f"hostile-load targets failed: {'; '.join(failed)}")


def start_and_measure(args: argparse.Namespace, headers: dict) -> tuple[list[dict], list[dict], dict | None]:
    """The Griffin-Lim table, --before, then the app in a local Ray: batched and unbatched
    levels (and with --hostile the hostile scenarios against the batched deployment)."""
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint_or_tiny(args.checkpoint, args.work)

    quality = []
    if args.quality_iters:
        features = args.quality_features if args.quality_features.exists() else args.work / "data"
        print(f"Griffin-Lim quality on {features}", flush=True)
        quality = griffin_lim_quality(features, [int(n) for n in args.quality_iters.split(",")], args.quality_clips)

    results = run_before(args.before, checkpoint, args) if args.before else []

    # deferred: the application imports torch, which the --url path never needs
    from emogen.serving.app import ServeArgs, app

    hostile = None
    with local_serve() as base:
        plans = [("batched", 8, args.stack_rows, args.batch_wait, (1, 8, 32)), ("unbatched", 1, 1, 0.0, (8,))]
        for name, max_batch, stack_rows, wait, levels in plans:
            serve.run(app(ServeArgs(checkpoint=checkpoint, max_batch_size=max_batch, stack_rows=stack_rows,
                                    batch_wait_timeout_s=wait, griffin_lim_iters=args.griffin_lim_iters,
                                    max_ongoing_requests=args.max_ongoing, api_key=args.api_key, num_cpus=1)),
                      name="emogen", route_prefix="/")
            results += run_levels(base, name, max_batch, levels, args, headers)
            if args.hostile and name == "batched":
                hostile = run_hostile(base, args)
            serve.delete("emogen")
    return quality, results, hostile


def report(args: argparse.Namespace, quality: list[dict], results: list[dict], load_start: str, load_end: str) -> None:
    """The Griffin-Lim table, the load table and the batched / unbatched ratios."""
    if quality:
        best = quality[-1]
        chosen = next(q for q in quality if q["sc_mean"] <= best["sc_mean"] * (1 + args.quality_tolerance))
        print(f"\nGriffin-Lim on {quality[0]['clips']} real mels (one thread):")
        print("| iterations | spectral convergence, mean | max | ms per clip |")
        print("|---|---|---|---|")
        for q in quality:
            print(f"| {q['iterations']} | {q['sc_mean']} | {q['sc_max']} | {q['ms_per_clip']} |")
        print(f"fewest iterations within {args.quality_tolerance:.0%} of {best['iterations']} iterations' convergence: "
              f"{chosen['iterations']}")
    print("\n| mode | format | concurrency | requests | errors | p50 s | p95 s | req/s | clips/s | clips per batch (last <= 20) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        sizes = r.get("batches_seen")
        seen = f"mean {r['batch_mean']} ({min(sizes)}-{max(sizes)})" if sizes else "-"
        print(f"| {r['mode']} (max_batch_size {r['max_batch_size']}) | {r['format']} | {r['concurrency']} | {r['requests']} | "
              f"{r['errors']} | {r['p50_s']} | {r['p95_s']} | {r['req_per_s']} | {r['clips_per_s']} | {seen} |")
    for prefix in ([f"before {args.before}: "] if args.before else []) + [""]:
        for fmt in args.formats.split(","):
            b = [r for r in results if r["mode"] == f"{prefix}batched" and r["format"] == fmt and r["concurrency"] == 8]
            u = [r for r in results if r["mode"] == f"{prefix}unbatched" and r["format"] == fmt]
            if b and u and u[0]["req_per_s"]:
                print(f"{prefix}{fmt}: batched / unbatched throughput at concurrency 8 = "
                      f"{b[0]['req_per_s'] / u[0]['req_per_s']:.2f}x")
    one = {r["mode"]: r["p50_s"] for r in results if r["format"] == "wav" and r["concurrency"] == 1}
    if one:
        print("p50 of one WAV request at concurrency 1: " + ", ".join(f"{mode} {p50} s" for mode, p50 in one.items()))
    print(f"load average: {load_start} at start, {load_end} at end")


if __name__ == "__main__":
    main()
