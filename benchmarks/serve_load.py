"""Load test of the Ray Serve synthesis service, loopback only, bounded in requests and time.

    python benchmarks/serve_load.py                       # trains a tiny latent-diffusion generator first
    python benchmarks/serve_load.py --checkpoint PATH     # any diffusion or VAE checkpoint

Starts the app on 127.0.0.1:<free port> in a local 2-CPU Ray, then:
  1. batched (max_batch_size 8, stack_rows 8): concurrency 1, 8 and 32;
  2. unbatched (max_batch_size 1, stack_rows 1: one request per model call): concurrency 8;
for format 'npy' (the model's mels: what batching speeds up) and 'wav' (plus Griffin-Lim).
Prints p50/p95 latency, requests/s, clips/s and errors (must be 0) as a table and JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def tiny_checkpoint(work: Path) -> str:
    """A tiny VAE + latent diffusion (the demo's serving path at test size), cached in `work`."""
    cached = work / "checkpoint.txt"
    if cached.exists() and Path(cached.read_text().strip()).exists():
        return cached.read_text().strip()
    from emogen.corpus import generate_corpus
    from emogen.data import preprocess
    from emogen.datasets import build_manifest
    from emogen.training import FitConfig, fit

    generate_corpus(work / "corpus", preset="tiny", seed=0)
    preprocess(build_manifest([work / "corpus"]), work / "data")
    kw = dict(preset="tiny", epochs=1, storage_path=work / "train", tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    vae = fit("vae", work / "data", FitConfig(run_name="vae", **kw))
    diff = fit("diffusion", work / "data", FitConfig(run_name="latent", vae_checkpoint=vae["checkpoint"],
                                                   overrides={"diffusion": {"space": "latent"}, "unet": {"in_channels": 4}}, **kw))
    cached.write_text(diff["checkpoint"])
    return diff["checkpoint"]


async def load(url: str, body: dict, concurrency: int, requests: int, deadline: float) -> dict:
    import httpx

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
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

    return {"requests": len(lat), "errors": errors, "seconds": round(wall, 2), "p50_s": round(pct(50), 3),
            "p95_s": round(pct(95), 3), "req_per_s": round(len(lat) / wall, 2), "clips_per_s": round(clips / wall, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-serve")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--requests-per-worker", type=int, default=3, help="requests = max(8, this x concurrency)")
    p.add_argument("--max-seconds", type=float, default=120, help="per measurement")
    p.add_argument("--griffin-lim-iters", type=int, default=32)
    p.add_argument("--formats", default="npy,wav")
    p.add_argument("--stack-rows", type=int, default=8, help="batched mode: rows per model call")
    p.add_argument("--batch-wait", type=float, default=0.02, help="batched mode: batch_wait_timeout_s")
    args = p.parse_args()

    import ray
    from ray import serve

    from emogen.serving.app import ServeArgs, app

    args.work.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    results = []
    try:
        checkpoint = args.checkpoint or tiny_checkpoint(args.work)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}/v1/synthesize"
        plans = [("batched", 8, args.stack_rows, args.batch_wait, (1, 8, 32)), ("unbatched", 1, 1, 0.0, (8,))]
        for name, max_batch, stack_rows, wait, levels in plans:
            serve.run(app(ServeArgs(checkpoint=checkpoint, max_batch_size=max_batch, stack_rows=stack_rows,
                                    batch_wait_timeout_s=wait, griffin_lim_iters=args.griffin_lim_iters,
                                    num_cpus=1)), name="emogen", route_prefix="/")
            for fmt in args.formats.split(","):
                body = {"emotion": "fear", "num_samples": 1, "steps": args.steps, "format": fmt}
                asyncio.run(load(url, body, 1, 2, time.perf_counter() + 60))  # warm-up
                for c in levels:
                    n = max(8, args.requests_per_worker * c)
                    r = asyncio.run(load(url, body, c, n, time.perf_counter() + args.max_seconds))
                    r.update(mode=name, max_batch_size=max_batch, format=fmt, concurrency=c)
                    results.append(r)
                    print(json.dumps(r), flush=True)
            serve.delete("emogen")
    finally:
        serve.shutdown()
        ray.shutdown()

    print("\n| mode | format | concurrency | requests | errors | p50 s | p95 s | req/s | clips/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} (max_batch_size {r['max_batch_size']}) | {r['format']} | {r['concurrency']} | {r['requests']} | "
              f"{r['errors']} | {r['p50_s']} | {r['p95_s']} | {r['req_per_s']} | {r['clips_per_s']} |")
    for fmt in args.formats.split(","):
        b = [r for r in results if r["mode"] == "batched" and r["format"] == fmt and r["concurrency"] == 8]
        u = [r for r in results if r["mode"] == "unbatched" and r["format"] == fmt]
        if b and u and u[0]["req_per_s"]:
            print(f"{fmt}: batched / unbatched throughput at concurrency 8 = {b[0]['req_per_s'] / u[0]['req_per_s']:.2f}x")
    if any(r["errors"] for r in results):
        raise SystemExit("errors during the load test")


if __name__ == "__main__":
    main()
