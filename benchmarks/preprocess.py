"""Preprocessing throughput and memory: the seed's librosa loop vs the Ray Data pipeline.

Both sides turn the same manifest (the labelled clips of a corpus) into the same artifact,
one Parquet table of log-mels plus metadata:

(a) seed-style loop, one process: librosa.load(path, sr=22050) (decodes the whole file and
    resamples with soxr), centre crop / zero pad to 4.0 s, peak normalize,
    librosa.feature.melspectrogram(n_fft=2048, hop_length=512, n_mels=128, fmin=20,
    fmax=8000), librosa.power_to_db, rows collected in a list, then pandas -> Parquet.
(b) ``emogen.data.preprocess`` (Ray Data actor pool) with ``ray.init(num_cpus=2)``.
    "cold": the first preprocess in a fresh Ray instance; ray.init itself is excluded,
    everything inside preprocess (plan, actor start-up incl. torch import, featurize,
    Parquet write, summary/rejects files) is included.
    "warm": the same, after a tiny preprocess (8 clips) in the same Ray instance. Actors
    are per-call, so the warm run still starts (and imports torch in) its actors; the
    warm-up removes only one-off costs such as Ray Data's driver-side imports/planning.
(c) peak memory of (b) at two corpus sizes (N and 4N clips, manifest rows replicated),
    each in a fresh process with a fresh Ray instance: RSS (and PSS) summed over the
    driver and all its descendants (gcs, raylet, Ray workers `ray::...`) sampled every
    0.1 s, plus the peak object-store (plasma) usage from Ray's memory summary.

Usage:
    python benchmarks/preprocess.py [--corpus DIR | --work DIR] [--clips N]
        [--batch-size 16] [--concurrency 2] [--sweep-batch-sizes 4,16,64]
        [--sweep-concurrency 1,2] [--memory-sizes 500,2000] [--skip-memory]
        [--json-out FILE]

Prints a table per part and, last, one line of JSON with every number.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import write_result

from emogen.config import AudioConfig

RAY_CPUS = 2
WARMUP_CLIPS = 8


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------- inputs


def ensure_corpus(corpus: str | None, work: Path) -> Path:
    """An existing corpus dir, or the `large` preset generated (once) under work/corpus."""
    if corpus:
        return Path(corpus)
    out = work / "corpus"
    if (out / "corpus.json").exists():
        log(f"reusing corpus at {out}")
        return out
    from emogen.corpus import generate_corpus

    log(f"generating the 'large' demo corpus into {out} (2 workers) ...")
    t = time.perf_counter()
    table = generate_corpus(out, preset="large", seed=0, workers=2)
    log(f"  {len(table)} files in {time.perf_counter() - t:.0f} s")
    return out


def labelled_manifest(corpus: Path) -> pd.DataFrame:
    """The manifest rows with a usable label: both sides decode exactly these clips."""
    from emogen.datasets import build_manifest

    manifest = build_manifest([corpus])
    return manifest[manifest["reject_reason"] == ""].reset_index(drop=True)


def resize(manifest: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The first n rows, replicating the manifest (same files, new clip ids) if n > len."""
    if n is None or n == len(manifest):
        return manifest
    reps = -(-n // len(manifest))
    out = pd.concat([manifest] * reps, ignore_index=True).iloc[:n].copy()
    copy_no = np.arange(len(out)) // len(manifest)
    out["clip_id"] = [c if k == 0 else f"{c}#copy{k}" for c, k in zip(out["clip_id"], copy_no)]
    return out.reset_index(drop=True)


# --------------------------------------------------------------- (a) librosa loop


def librosa_loop(manifest: pd.DataFrame, out_file: Path, cfg: AudioConfig) -> dict[str, Any]:
    """The seed notebook's way, one process, then the same kind of Parquet table."""
    import librosa

    t0 = time.perf_counter()
    rows = []
    for rec in manifest.to_dict("records"):
        y, sr = librosa.load(rec["path"], sr=cfg.sample_rate)  # mono + soxr_hq resample
        n = cfg.num_samples
        if len(y) > n:  # centre crop
            start = (len(y) - n) // 2
            y = y[start : start + n]
        elif len(y) < n:  # centre zero pad
            left = (n - len(y)) // 2
            y = np.pad(y, (left, n - len(y) - left))
        peak = float(np.max(np.abs(y)))
        if peak > 0:
            y = y / peak
        mel = librosa.feature.melspectrogram(
            y=y, sr=sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max
        )
        db = librosa.power_to_db(mel)
        rows.append({**rec, "status": "ok", "n_mels": db.shape[0], "n_frames": db.shape[1], "mel": db.astype(np.float32).tobytes()})
    t_features = time.perf_counter() - t0
    out_file.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out_file, engine="pyarrow", index=False)
    seconds = time.perf_counter() - t0
    return {
        "clips": len(manifest),
        "seconds": round(seconds, 2),
        "features_seconds": round(t_features, 2),
        "clips_per_s": round(len(manifest) / seconds, 1),
        "output": str(out_file),
    }


# ----------------------------------------------------------------- (b) Ray Data


def start_ray() -> float:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t = time.perf_counter()
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    # A progress bar redraw loop in the driver competes for the same 2 cores: off.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return time.perf_counter() - t


def ray_run(manifest: pd.DataFrame, out: Path, cfg: AudioConfig, batch_size: int, concurrency: int | None) -> dict[str, Any]:
    from emogen.data import preprocess

    t = time.perf_counter()
    summary = preprocess(manifest, out, cfg, batch_size=batch_size, concurrency=concurrency)
    seconds = time.perf_counter() - t
    if summary["accepted"] != len(manifest):
        raise RuntimeError(f"Ray pipeline accepted {summary['accepted']} of {len(manifest)} clips: {summary['reject_reasons']}")
    files = list((out / "features").glob("*.parquet"))
    return {
        "clips": len(manifest),
        "batch_size": batch_size,
        "concurrency": concurrency or RAY_CPUS,
        "seconds": round(seconds, 2),
        "clips_per_s": round(len(manifest) / seconds, 1),
        "parquet_files": len(files),
    }


def agreement_db(librosa_file: Path, ray_out: Path, cfg: AudioConfig, n: int = 20) -> float:
    """Median over n clips of the mean |dB difference| between the two artifacts: a check
    that both did the same work. Both are clamped to the range both keep: librosa's
    power_to_db floors at (clip max - 80 dB) (top_db), the pipeline at db_floor..db_ceil."""
    from emogen.data import decode_mels, read_features

    a = pd.read_parquet(librosa_file, columns=["clip_id", "n_mels", "n_frames", "mel"]).sort_values("clip_id").head(n)
    b = read_features(ray_out, columns=["clip_id", "n_mels", "n_frames", "mel"])
    b = b[b["clip_id"].isin(a["clip_id"])].sort_values("clip_id")
    ma = decode_mels(a.reset_index(drop=True))
    span = cfg.db_ceil - cfg.db_floor
    mb = (decode_mels(b.reset_index(drop=True)) + 1.0) * (span / 2.0) + cfg.db_floor
    lo = np.maximum(cfg.db_floor, ma.max(axis=(1, 2), keepdims=True) - 80.0)
    ma, mb = np.clip(ma, lo, cfg.db_ceil), np.clip(mb, lo, cfg.db_ceil)
    return float(np.median(np.abs(ma - mb).mean(axis=(1, 2))))


# ------------------------------------------------------------------ (c) memory


class PeakSampler(threading.Thread):
    """Peak RSS/PSS summed over this process and all its descendants, every interval s."""

    def __init__(self, interval: float = 0.1, object_store_every: float = 0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.object_store_every = object_store_every
        self._stop_event = threading.Event()
        self.peak: dict[str, float] = {"rss_total": 0, "rss_driver": 0, "rss_ray_workers": 0, "rss_ray_services": 0, "pss_total": 0}
        self.peak_object_store = 0.0
        self.peak_processes = 0
        self.samples = 0
        self._cmdlines: dict[int, str] = {}

    def _cmdline(self, proc) -> str:
        if proc.pid not in self._cmdlines:
            self._cmdlines[proc.pid] = " ".join(proc.cmdline())
        return self._cmdlines[proc.pid]

    def sample(self) -> dict[str, float]:
        import psutil

        me = psutil.Process()
        now = {k: 0.0 for k in self.peak}
        procs = [me] + me.children(recursive=True)
        for proc in procs:
            try:
                info = proc.memory_full_info()  # rss, uss, pss (from smaps_rollup)
                name = self._cmdline(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            now["rss_total"] += info.rss
            now["pss_total"] += getattr(info, "pss", info.rss)
            if proc.pid == me.pid:
                now["rss_driver"] += info.rss
            elif "ray::" in name or "default_worker.py" in name:
                now["rss_ray_workers"] += info.rss
            else:
                now["rss_ray_services"] += info.rss
        self.peak_processes = max(self.peak_processes, len(procs))
        return now

    def run(self) -> None:
        last_store = 0.0
        while not self._stop_event.is_set():
            now = self.sample()
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            self.samples += 1
            if time.monotonic() - last_store >= self.object_store_every:
                last_store = time.monotonic()
                self.peak_object_store = max(self.peak_object_store, object_store_bytes())
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def object_store_bytes() -> float:
    """Plasma bytes in use on this node, from Ray's memory summary (0 if unavailable)."""
    try:
        import ray
        from ray._private.internal_api import memory_summary

        # the address matters: other Ray instances may run on the same machine
        text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception:  # noqa: BLE001 - a private API: the number is a bonus
        return 0.0
    m = re.search(r"Plasma memory usage ([\d.]+) MiB", text)
    return float(m.group(1)) * 2**20 if m else 0.0


def memory_child(args: argparse.Namespace) -> None:
    """One memory measurement in this (fresh) process with a fresh Ray instance."""
    import ray

    cfg = AudioConfig()
    manifest = resize(pd.read_parquet(args.manifest_file), args.memory_child)
    start_ray()
    time.sleep(2.0)  # let prestarted idle workers finish starting
    baseline = PeakSampler().sample()
    sampler = PeakSampler(interval=0.1)
    sampler.start()
    run = ray_run(manifest, Path(args.work) / f"ray_mem_{args.memory_child}", cfg, args.batch_size, args.concurrency)
    sampler.stop()
    ray.shutdown()
    mib = 2**20
    result = {
        "clips": len(manifest),
        "seconds": run["seconds"],
        "clips_per_s": run["clips_per_s"],
        "baseline_rss_total_mib": round(baseline["rss_total"] / mib),
        **{f"peak_{k}_mib": round(v / mib) for k, v in sampler.peak.items()},
        "peak_object_store_mib": round(sampler.peak_object_store / mib, 1),
        "peak_processes": sampler.peak_processes,
        "samples": sampler.samples,
    }
    print("MEMORY_RESULT " + json.dumps(result), flush=True)


def measure_memory(size: int, manifest_file: Path, work: Path, batch_size: int, concurrency: int | None) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(size), "--manifest-file", str(manifest_file),
           "--work", str(work), "--batch-size", str(batch_size)]
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY_RESULT "):
            return json.loads(line[len("MEMORY_RESULT ") :])
    raise RuntimeError(f"memory run for {size} clips failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# --------------------------------------------------------------------------- main


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=None, help="clips to process (default: all labelled clips of the corpus)")
    p.add_argument("--corpus", default=None, help="an existing corpus dir (default: generate the 'large' preset)")
    p.add_argument("--work", default=None, help="scratch dir for the corpus and outputs (default: a temp dir)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size of the headline Ray runs (emogen default 16)")
    p.add_argument("--concurrency", type=int, default=None, help="actors (default: preprocess's default = CPUs)")
    p.add_argument("--sweep-batch-sizes", default="4,16,64", help="warm Ray runs per batch size ('' to skip)")
    p.add_argument("--sweep-concurrency", default="1,2", help="warm Ray runs per actor count ('' to skip)")
    p.add_argument("--memory-sizes", default="500,2000", help="N,4N clips for the memory part")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-ray", action="store_true", help="only the librosa loop (a diagnostic)")
    p.add_argument("--loop-blas-threads", type=int, default=1,
                   help="also run the loop with BLAS capped in-process to this many threads (threadpoolctl), "
                        "as a second baseline; 0 to skip. The headline loop uses the env as is")
    p.add_argument("--json-out", default=None)
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--manifest-file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.memory_child is not None:
        memory_child(args)
        return

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="emogen_ppbench_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = AudioConfig()
    corpus = ensure_corpus(args.corpus, work)
    base = labelled_manifest(corpus)
    manifest = resize(base, args.clips)
    manifest_file = work / "manifest.parquet"
    base.to_parquet(manifest_file, index=False)
    by_sr = manifest["source_sr"].value_counts().sort_index()
    load = os.getloadavg()[0]
    log(f"corpus {corpus}: {len(base)} labelled clips; benchmarking {len(manifest)} "
        f"({', '.join(f'{int(n)} @ {int(sr)} Hz' for sr, n in by_sr.items())}); "
        f"{os.cpu_count()} CPUs, load average before start {load:.2f}")
    result: dict[str, Any] = {"clips": len(manifest), "cpus": os.cpu_count(), "ray_num_cpus": RAY_CPUS, "loadavg_start": round(load, 2)}

    # (a) seed loop -- run before Ray exists so nothing else competes for the cores
    log("\n(a) librosa loop, single process ...")
    loop = librosa_loop(manifest, work / "librosa" / "features.parquet", cfg)
    loop["blas_threads"] = "env"
    result["librosa"] = loop
    log(f"    BLAS threads as in the env: {loop['seconds']:.1f} s, {loop['clips_per_s']:.1f} clips/s "
        f"(features {loop['features_seconds']:.1f} s + Parquet write)")
    loop1 = None
    if args.loop_blas_threads:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.loop_blas_threads, user_api="blas"):
            loop1 = librosa_loop(manifest, work / "librosa_blas1" / "features.parquet", cfg)
        loop1["blas_threads"] = args.loop_blas_threads
        result["librosa_blas_capped"] = loop1
        log(f"    BLAS capped at {args.loop_blas_threads} thread(s): {loop1['seconds']:.1f} s, {loop1['clips_per_s']:.1f} clips/s")
    if args.skip_ray:
        log("\n" + json.dumps(result))
        return

    # (b) Ray Data
    log(f"\n(b) Ray Data pipeline, ray.init(num_cpus={RAY_CPUS}) ...")
    import ray

    init_s = start_ray()
    result["ray_init_seconds"] = round(init_s, 2)
    cold = ray_run(manifest, work / "ray_cold", cfg, args.batch_size, args.concurrency)
    ray_run(resize(base, WARMUP_CLIPS), work / "ray_warmup", cfg, args.batch_size, args.concurrency)
    warm = ray_run(manifest, work / "ray_warm", cfg, args.batch_size, args.concurrency)
    result["ray_cold"], result["ray_warm"] = cold, warm
    result["agreement_mean_abs_db"] = round(agreement_db(work / "librosa" / "features.parquet", work / "ray_warm", cfg), 3)

    sweep = []
    for bs in parse_ints(args.sweep_batch_sizes):
        for conc in parse_ints(args.sweep_concurrency):
            run = ray_run(manifest, work / f"ray_sweep_b{bs}_c{conc}", cfg, bs, conc)
            run["ratio"] = round(run["clips_per_s"] / loop["clips_per_s"], 2)
            sweep.append(run)
            log(f"    sweep batch_size={bs:<3} concurrency={conc}: {run['seconds']:.1f} s, {run['clips_per_s']:.1f} clips/s, ratio {run['ratio']:.2f}x")
    result["sweep"] = sweep
    ray.shutdown()

    result["ratio_cold"] = round(cold["clips_per_s"] / loop["clips_per_s"], 2)
    result["ratio_warm"] = round(warm["clips_per_s"] / loop["clips_per_s"], 2)
    if sweep:
        best = max(sweep, key=lambda r: r["clips_per_s"])
        result["best"] = {k: best[k] for k in ("batch_size", "concurrency", "clips_per_s", "ratio")}
    if loop1:
        result["ratio_warm_vs_blas_capped_loop"] = round(warm["clips_per_s"] / loop1["clips_per_s"], 2)
        if sweep:
            result["best"]["ratio_vs_blas_capped_loop"] = round(best["clips_per_s"] / loop1["clips_per_s"], 2)

    log("\n" + "-" * 86)
    log(f"{'run':<44}{'seconds':>10}{'clips/s':>12}{'vs loop':>10}{'files':>8}")
    log(f"{'librosa loop (1 process, BLAS env as is)':<44}{loop['seconds']:>10.1f}{loop['clips_per_s']:>12.1f}{1.0:>9.2f}x{'1':>8}")
    if loop1:
        label = f"librosa loop (1 process, BLAS {args.loop_blas_threads} thread)"
        log(f"{label:<44}{loop1['seconds']:>10.1f}{loop1['clips_per_s']:>12.1f}{loop1['clips_per_s'] / loop['clips_per_s']:>9.2f}x{'1':>8}")
    for label, run, ratio in (("Ray cold (first preprocess, excl. ray.init)", cold, result["ratio_cold"]),
                              ("Ray warm (after 8-clip warm-up)", warm, result["ratio_warm"])):
        log(f"{label:<44}{run['seconds']:>10.1f}{run['clips_per_s']:>12.1f}{ratio:>9.2f}x{run['parquet_files']:>8}")
    for run in sweep:
        label = f"Ray warm batch_size={run['batch_size']} concurrency={run['concurrency']}"
        log(f"{label:<44}{run['seconds']:>10.1f}{run['clips_per_s']:>12.1f}{run['ratio']:>9.2f}x{run['parquet_files']:>8}")
    if loop1:
        log(f"Ray warm vs the BLAS-capped loop: {result['ratio_warm_vs_blas_capped_loop']:.2f}x"
            + (f"; best sweep setting vs it: {result['best']['ratio_vs_blas_capped_loop']:.2f}x" if sweep else ""))
    log(f"ray.init: {init_s:.1f} s (excluded); headline batch_size={args.batch_size}, "
        f"concurrency={args.concurrency or RAY_CPUS}; mean |dB| loop vs Ray: {result['agreement_mean_abs_db']:.3f}")

    # (c) memory
    if not args.skip_memory:
        sizes = parse_ints(args.memory_sizes)
        log(f"\n(c) peak memory, fresh process + Ray instance per size: {sizes} clips ...")
        mem = [measure_memory(n, manifest_file, work, args.batch_size, args.concurrency) for n in sizes]
        result["memory"] = mem
        lo, hi = mem[0], mem[-1]
        result["memory_peak_rss_ratio"] = round(hi["peak_rss_total_mib"] / lo["peak_rss_total_mib"], 3)
        result["memory_peak_pss_ratio"] = round(hi["peak_pss_total_mib"] / lo["peak_pss_total_mib"], 3)
        if lo["peak_object_store_mib"] > 0:
            result["memory_peak_object_store_ratio"] = round(hi["peak_object_store_mib"] / lo["peak_object_store_mib"], 2)
        # fixed start-up cancels out between the two sizes: the marginal per-clip rate
        result["ray_marginal_clips_per_s"] = round((hi["clips"] - lo["clips"]) / max(1e-9, hi["seconds"] - lo["seconds"]), 1)
        log("-" * 86)
        log(f"{'clips':>6}{'seconds':>9}{'clips/s':>9}{'idle RSS':>10}{'peak RSS':>10}{'driver':>8}{'workers':>9}"
            f"{'services':>10}{'peak PSS':>10}{'plasma':>9}  (MiB)")
        for m in mem:
            log(f"{m['clips']:>6}{m['seconds']:>9.1f}{m['clips_per_s']:>9.1f}{m['baseline_rss_total_mib']:>10}"
                f"{m['peak_rss_total_mib']:>10}{m['peak_rss_driver_mib']:>8}{m['peak_rss_ray_workers_mib']:>9}"
                f"{m['peak_rss_ray_services_mib']:>10}{m['peak_pss_total_mib']:>10}{m['peak_object_store_mib']:>9.1f}")
        log(f"peak RSS {hi['clips']} vs {lo['clips']} clips: {result['memory_peak_rss_ratio']:.3f}x (target <= 1.2x); "
            f"PSS {result['memory_peak_pss_ratio']:.3f}x; marginal Ray rate {result['ray_marginal_clips_per_s']:.1f} clips/s")

    result["work"] = str(work)
    line = json.dumps(result)
    write_result(result, args.json_out)
    log("")
    log(line)


if __name__ == "__main__":
    main()
