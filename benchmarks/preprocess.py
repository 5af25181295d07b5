"""Preprocessing throughput and memory: the seed's librosa loop vs emogen's Ray Data pipeline.

Both sides turn the same manifest (the labelled clips of a corpus) into the same artifact,
one Parquet table of log-mels plus metadata. In one run:

(0) per-clip featurize cost in this process on one thread (BLAS and torch capped at 1):
    decode, standardize (mono + soxr resample + crop/pad + peak), mel power, dB + scaling,
    float32 bytes, and ``featurize_rows`` end to end; beside it the previous mel
    (torchaudio's MelSpectrogram, what LogMelExtractor ran before) on the same waves.
(a) seed-style loop, one process, BLAS capped at 1 thread in-process (threadpoolctl), the
    honest baseline: librosa.load(path, sr=22050) (decodes the whole file, resamples with
    soxr), centre crop / zero pad to 4.0 s, peak normalize,
    librosa.feature.melspectrogram(n_fft=2048, hop_length=512, n_mels=128, fmin=20,
    fmax=8000), librosa.power_to_db, rows collected in a list, then pandas -> Parquet.
    First a warm-up call on a few clips, timed and reported apart: librosa's first call
    pays its lazy imports and numba compilation, which a per-clip rate must not count.
    Then the small size (the corpus, 444 clips for the demo) and the large one (manifest
    rows replicated, default 5x = 2,220 clips). ``--env-blas-loop`` adds the loop with BLAS
    threads as the environment sets them (they thrash on a busy 2-core machine).
(b) ``emogen.data.features.preprocess`` (Ray Data) with ``ray.init(num_cpus=2)``; ray.init
    itself is timed and reported, not counted. "cold": the small size as the first
    preprocess in the fresh Ray instance, so it includes everything a first call pays
    (Ray Data's start-up: its stats and autoscaling-coordinator actors, worker imports;
    featurize, Parquet write, summary/rejects files); then the large size in the same
    instance, then the small size again ("warm": Ray Data already started). The CPU time
    each kind of process spent in each run is reported beside it, and the execution plan
    Ray Data logged. Optional sweep of rows per block (``--sweep-rows``) at the large size.
(c) peak memory of (b) at two corpus sizes (N and 4N clips, manifest rows replicated),
    each in a fresh process with a fresh Ray instance: RSS (and PSS) summed over the
    driver and all its descendants (gcs, raylet, Ray workers `ray::...`) sampled every
    0.1 s, plus the peak object-store (plasma) usage from Ray's memory summary.

Usage:
    python benchmarks/preprocess.py [--corpus DIR | --work DIR] [--large-clips 2220]
        [--sweep-rows 16,128] [--memory-sizes 500,2000] [--skip-memory] [--json-out FILE]

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

from common import load_avg, write_result

from emogen.config import AudioConfig

RAY_CPUS = 2


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------- inputs


def ensure_corpus(corpus: str | None, work: Path) -> Path:
    """An existing corpus dir, or the `demo` preset generated (once) under work/corpus."""
    if corpus:
        return Path(corpus)
    out = work / "corpus"
    if (out / "corpus.json").exists():
        log(f"reusing corpus at {out}")
        return out
    from emogen.data.corpus import generate_corpus

    log(f"generating the 'demo' corpus into {out} (2 workers) ...")
    t = time.perf_counter()
    table = generate_corpus(out, preset="demo", seed=0, workers=2)
    log(f"  {len(table)} files in {time.perf_counter() - t:.0f} s")
    return out


def labelled_manifest(corpus: Path) -> pd.DataFrame:
    """The manifest rows with a usable label: both sides decode exactly these clips."""
    from emogen.data.datasets import build_manifest

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
    t0 = time.perf_counter()
    import librosa  # a first call's import is timed with it (the warm-up call pays it)

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


class PlanLog(logging.Handler):
    """The execution plans Ray Data logs when a dataset starts, kept instead of printed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.plans: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Execution plan of Dataset"):
            self.plans.append(message.split(": ", 1)[1])


PLANS = PlanLog()


def start_ray() -> float:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t = time.perf_counter()
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # the plan line ("... -> TaskPoolMapOperator[MapBatches(featurize_block)->Write]") to
    # PLANS only, the rest of Ray Data's INFO lines nowhere
    executor_log = logging.getLogger("ray.data._internal.execution.streaming_executor")
    executor_log.setLevel(logging.INFO)
    executor_log.propagate = False
    executor_log.addHandler(PLANS)
    ctx = ray.data.DataContext.get_current()
    # A progress bar redraw loop in the driver competes for the same 2 cores: off
    # (preprocess turns them off for its own datasets anyway).
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = True
    return time.perf_counter() - t


def cpu_by_process() -> dict[int, float]:
    """CPU seconds used so far by this process and each of its descendants, by pid."""
    import psutil

    me = psutil.Process()
    used = {}
    for proc in [me] + me.children(recursive=True):
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        used[proc.pid] = times.user + times.system
    return used


def cpu_by_kind(used: dict[int, float]) -> dict[str, float]:
    """Per-pid CPU seconds summed by what each process is now: the driver, Ray workers, Ray
    Data's actors (stats, autoscaling coordinator), Ray's services. Named once all runs are
    done: an actor's process is still a plain worker while it imports."""
    import psutil

    totals = {"driver": 0.0, "workers": 0.0, "ray_data_actors": 0.0, "services": 0.0}
    for pid, seconds in used.items():
        try:
            name = " ".join(psutil.Process(pid).cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            name = "ray::"  # a worker that exited since
        kind = ("driver" if pid == os.getpid() else "ray_data_actors" if "_StatsActor" in name or "Coordinator" in name
                else "workers" if "ray::" in name or "default_worker.py" in name else "services")
        totals[kind] += seconds
    return {k: round(v, 2) for k, v in totals.items()}


def ray_run(manifest: pd.DataFrame, out: Path, cfg: AudioConfig, rows_per_part: int | None = None,
            concurrency: int | None = None) -> dict[str, Any]:
    from emogen.data.features import preprocess

    cpu_before = cpu_by_process()
    t = time.perf_counter()
    summary = preprocess(manifest, out, cfg, batch_size=rows_per_part, concurrency=concurrency)
    seconds = time.perf_counter() - t
    cpu = {pid: used - cpu_before.get(pid, 0.0) for pid, used in cpu_by_process().items()}
    if summary["accepted"] != len(manifest):
        raise RuntimeError(f"Ray pipeline accepted {summary['accepted']} of {len(manifest)} clips: {summary['reject_reasons']}")
    files = list((out / "features").glob("*.parquet"))
    return {
        "clips": len(manifest),
        "rows_per_part": rows_per_part,
        "concurrency": concurrency or RAY_CPUS,
        "seconds": round(seconds, 2),
        "clips_per_s": round(len(manifest) / seconds, 1),
        "parquet_files": len(files),
        "cpu_by_pid": cpu,  # cpu_seconds once named (cpu_by_kind)
    }


# ------------------------------------------------------- (0) per-clip featurize


def featurize_costs(manifest: pd.DataFrame, cfg: AudioConfig) -> dict[str, float]:
    """Milliseconds per clip of each featurize step, one thread, in this process.

    Each step runs over all clips in turn (the previous step's outputs as its inputs), after
    one untimed clip; ``featurize_rows`` is the whole thing as the workers run it, with the
    allocator set up as they set it.
    """
    import torch
    import torchaudio
    from threadpoolctl import threadpool_limits

    from emogen.audio.clips import LogMel, db_to_scaled, power_to_db, read_audio, standardize_clip
    from emogen.data.features import featurize_rows, keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()  # as every preprocessing worker does before its first clip

    paths = list(manifest["path"])
    log_mel = LogMel(cfg)
    previous_mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, f_min=cfg.f_min, f_max=cfg.f_max,
        n_mels=cfg.n_mels, power=2.0, norm="slaney", mel_scale="slaney", center=True, pad_mode="reflect")

    def per_clip(step, inputs: list) -> tuple[float, list]:
        step(inputs[0])
        t = time.perf_counter()
        outputs = [step(x) for x in inputs]
        return 1000 * (time.perf_counter() - t) / len(inputs), outputs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            ms: dict[str, float] = {}
            ms["decode"], raw = per_clip(lambda p: read_audio(p, cfg), paths)
            ms["standardize"], waves = per_clip(lambda d: standardize_clip(d[0], d[1], cfg), raw)
            ms["mel_power"], powers = per_clip(log_mel.power, waves)
            ms["db_scale"], mels = per_clip(lambda p: db_to_scaled(power_to_db(p), cfg), powers)
            ms["to_bytes"], _ = per_clip(lambda m: np.asarray(m, dtype=np.float32).tobytes(), mels)
            with torch.no_grad():
                ms["previous_mel_power_torchaudio"], _ = per_clip(lambda w: previous_mel(torch.from_numpy(w)), waves)
            featurize_rows(manifest.iloc[:1], log_mel)
            t = time.perf_counter()
            featurize_rows(manifest, log_mel)
            ms["featurize_rows"] = 1000 * (time.perf_counter() - t) / len(manifest)
    finally:
        torch.set_num_threads(threads)
    return {k: round(v, 3) for k, v in ms.items()}


def agreement_db(librosa_file: Path, ray_out: Path, cfg: AudioConfig, n: int = 20) -> float:
    """Median over n clips of the mean |dB difference| between the two artifacts: a check
    that both did the same work. Both are clamped to the range both keep: librosa's
    power_to_db floors at (clip max - 80 dB) (top_db), the pipeline at db_floor..db_ceil."""
    from emogen.data.features import decode_mels, read_features

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
    run = ray_run(manifest, Path(args.work) / f"ray_mem_{args.memory_child}", cfg, args.rows_per_part, args.concurrency)
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


def measure_memory(size: int, manifest_file: Path, work: Path, rows_per_part: int | None,
                   concurrency: int | None) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(size), "--manifest-file", str(manifest_file),
           "--work", str(work)]
    if rows_per_part:
        cmd += ["--rows-per-part", str(rows_per_part)]
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
    p.add_argument("--corpus", default=None, help="an existing corpus dir (default: generate the 'demo' preset)")
    p.add_argument("--work", default=None, help="scratch dir for the corpus and outputs (default: a temp dir)")
    p.add_argument("--clips", type=int, default=None, help="the small size (default: all labelled clips of the corpus)")
    p.add_argument("--large-clips", type=int, default=None,
                   help="the large size, manifest rows replicated (default: 5x the small size)")
    p.add_argument("--rows-per-part", type=int, default=None,
                   help="preprocess's batch_size, rows per block (default: its own rule)")
    p.add_argument("--concurrency", type=int, default=None, help="preprocess's concurrency (default: its own = CPUs)")
    p.add_argument("--sweep-rows", default="", help="rows per block to also run at the large size, e.g. 16,128 ('' = none)")
    p.add_argument("--warmup-clips", type=int, default=8, help="clips of the librosa loop's warm-up call")
    p.add_argument("--env-blas-loop", action="store_true",
                   help="also run the loop at the small size with BLAS threads as the environment sets them")
    p.add_argument("--memory-sizes", default="500,2000", help="N,4N clips for the memory part")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--json-out", default=None)
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--manifest-file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.memory_child is not None:
        memory_child(args)
        return

    from threadpoolctl import threadpool_limits

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="emogen_ppbench_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = AudioConfig()
    corpus = ensure_corpus(args.corpus, work)
    base = labelled_manifest(corpus)
    small = resize(base, args.clips)
    large = resize(base, args.large_clips or 5 * len(small))
    manifest_file = work / "manifest.parquet"
    base.to_parquet(manifest_file, index=False)
    by_sr = small["source_sr"].value_counts().sort_index()
    load = load_avg()
    log(f"corpus {corpus}: {len(base)} labelled clips ({', '.join(f'{int(n)} @ {int(sr)} Hz' for sr, n in by_sr.items())}); "
        f"sizes {len(small)} and {len(large)}; {os.cpu_count()} CPUs; load average at start {load}")
    result: dict[str, Any] = {"clips_small": len(small), "clips_large": len(large), "cpus": os.cpu_count(),
                              "ray_num_cpus": RAY_CPUS, "loadavg_start": load}

    # (0) per-clip featurize, before Ray exists so nothing else competes for the cores
    log("\n(0) featurize per clip, one process, one thread ...")
    ms = featurize_costs(small, cfg)
    result["featurize_ms_per_clip"] = ms
    steps = ("decode", "standardize", "mel_power", "db_scale", "to_bytes")
    log("    " + ", ".join(f"{k} {ms[k]:.2f}" for k in steps) + f" ms; featurize_rows {ms['featurize_rows']:.2f} ms/clip "
        f"(target <= 5); previous mel (torchaudio) {ms['previous_mel_power_torchaudio']:.2f} ms vs now {ms['mel_power']:.2f}")

    # (a) the loop, BLAS capped at 1 thread: the baseline of every ratio
    log("\n(a) librosa loop, one process, BLAS capped at 1 thread ...")
    loops = {}
    with threadpool_limits(limits=1, user_api="blas"):
        warmup = librosa_loop(small.iloc[: args.warmup_clips], work / "librosa_warmup" / "features.parquet", cfg)
        result["loop_warmup"] = warmup
        log(f"    warm-up call, {warmup['clips']} clips (librosa's imports and first-call set-up): {warmup['seconds']:.2f} s, "
            "not counted")
        for name, manifest in (("small", small), ("large", large)):
            loops[name] = librosa_loop(manifest, work / f"librosa_{name}" / "features.parquet", cfg)
            log(f"    {len(manifest)} clips: {loops[name]['seconds']:.1f} s, {loops[name]['clips_per_s']:.1f} clips/s")
    result["loop_small"], result["loop_large"] = loops["small"], loops["large"]
    if args.env_blas_loop:
        env_loop = librosa_loop(small, work / "librosa_env_blas" / "features.parquet", cfg)
        result["loop_small_env_blas"] = env_loop
        log(f"    {len(small)} clips, BLAS threads as in the env: {env_loop['seconds']:.1f} s, {env_loop['clips_per_s']:.1f} clips/s")

    # (b) Ray
    log(f"\n(b) Ray pipeline, ray.init(num_cpus={RAY_CPUS}) ...")
    import ray

    init_s = start_ray()
    result["ray_init_seconds"] = round(init_s, 2)
    cold = ray_run(small, work / "ray_small", cfg, args.rows_per_part, args.concurrency)
    big = ray_run(large, work / "ray_large", cfg, args.rows_per_part, args.concurrency)
    warm = ray_run(small, work / "ray_small_warm", cfg, args.rows_per_part, args.concurrency)
    sweep = []
    for rows in parse_ints(args.sweep_rows):
        run = ray_run(large, work / f"ray_large_rows{rows}", cfg, rows, args.concurrency)
        run["ratio"] = round(run["clips_per_s"] / loops["large"]["clips_per_s"], 2)
        sweep.append(run)
    for run in (cold, big, warm, *sweep):
        run["cpu_seconds"] = cpu_by_kind(run.pop("cpu_by_pid"))
    ray.shutdown()
    result["ray_small_cold"], result["ray_large"], result["ray_small_warm"], result["sweep"] = cold, big, warm, sweep
    result["execution_plans"] = sorted(set(PLANS.plans))
    result["ratio_small_cold"] = round(cold["clips_per_s"] / loops["small"]["clips_per_s"], 2)
    result["ratio_small_warm"] = round(warm["clips_per_s"] / loops["small"]["clips_per_s"], 2)
    result["ratio_large"] = round(big["clips_per_s"] / loops["large"]["clips_per_s"], 2)
    with_init = len(small) / (cold["seconds"] + init_s)
    result["ratio_small_cold_with_ray_init"] = round(with_init / loops["small"]["clips_per_s"], 2)
    result["agreement_mean_abs_db"] = round(agreement_db(work / "librosa_small" / "features.parquet", work / "ray_small", cfg), 4)

    log("\n" + "-" * 92)
    log(f"{'run':<58}{'seconds':>9}{'clips/s':>10}{'vs loop':>9}{'files':>6}")
    for label, run, loop in ((f"librosa loop, BLAS 1 thread, {len(small)} clips", loops["small"], loops["small"]),
                             (f"Ray Data, {len(small)} clips, first call in a fresh Ray (cold)", cold, loops["small"]),
                             (f"librosa loop, BLAS 1 thread, {len(large)} clips", loops["large"], loops["large"]),
                             (f"Ray Data, {len(large)} clips", big, loops["large"]),
                             (f"Ray Data, {len(small)} clips again (warm)", warm, loops["small"]),
                             *((f"Ray Data, {len(large)} clips, {r['rows_per_part']} rows per block", r, loops["large"]) for r in sweep)):
        files = run.get("parquet_files", 1)
        log(f"{label:<58}{run['seconds']:>9.2f}{run['clips_per_s']:>10.1f}{run['clips_per_s'] / loop['clips_per_s']:>8.2f}x{files:>6}")
    log(f"headline: {result['ratio_small_cold']:.2f}x at {len(small)} clips incl. Ray Data's start-up (target >= 1.5x), "
        f"{result['ratio_large']:.2f}x at {len(large)} clips (target >= 2.0x), {result['ratio_small_warm']:.2f}x at "
        f"{len(small)} clips once started; featurize {ms['featurize_rows']:.2f} ms/clip (target <= 5)")
    log("CPU seconds per run (driver / workers / Ray Data's actors / Ray services): " + "; ".join(
        f"{name} {r['cpu_seconds']['driver']:.2f} / {r['cpu_seconds']['workers']:.2f} / {r['cpu_seconds']['ray_data_actors']:.2f}"
        f" / {r['cpu_seconds']['services']:.2f}" for name, r in (("cold", cold), ("large", big), ("warm", warm))))
    log("execution plan: " + " | ".join(result["execution_plans"]))
    log(f"ray.init {init_s:.1f} s, not counted (counting it: {result['ratio_small_cold_with_ray_init']:.2f}x at "
        f"{len(small)} clips); mean |dB| loop vs Ray: {result['agreement_mean_abs_db']:.4f}")

    # (c) memory
    if not args.skip_memory:
        sizes = parse_ints(args.memory_sizes)
        log(f"\n(c) peak memory, fresh process + Ray instance per size: {sizes} clips ...")
        mem = [measure_memory(n, manifest_file, work, args.rows_per_part, args.concurrency) for n in sizes]
        result["memory"] = mem
        lo, hi = mem[0], mem[-1]
        result["memory_peak_rss_ratio"] = round(hi["peak_rss_total_mib"] / lo["peak_rss_total_mib"], 3)
        result["memory_peak_pss_ratio"] = round(hi["peak_pss_total_mib"] / lo["peak_pss_total_mib"], 3)
        if lo["peak_object_store_mib"] > 0:
            result["memory_peak_object_store_ratio"] = round(hi["peak_object_store_mib"] / lo["peak_object_store_mib"], 2)
        log("-" * 92)
        log(f"{'clips':>6}{'seconds':>9}{'clips/s':>9}{'idle RSS':>10}{'peak RSS':>10}{'driver':>8}{'workers':>9}"
            f"{'services':>10}{'peak PSS':>10}{'plasma':>9}  (MiB)")
        for m in mem:
            log(f"{m['clips']:>6}{m['seconds']:>9.1f}{m['clips_per_s']:>9.1f}{m['baseline_rss_total_mib']:>10}"
                f"{m['peak_rss_total_mib']:>10}{m['peak_rss_driver_mib']:>8}{m['peak_rss_ray_workers_mib']:>9}"
                f"{m['peak_rss_ray_services_mib']:>10}{m['peak_pss_total_mib']:>10}{m['peak_object_store_mib']:>9.1f}")
        log(f"peak RSS {hi['clips']} vs {lo['clips']} clips: {result['memory_peak_rss_ratio']:.3f}x (target <= 1.2x); "
            f"PSS {result['memory_peak_pss_ratio']:.3f}x")

    result["loadavg_end"] = load_avg()
    result["work"] = str(work)
    write_result(result, args.json_out)
    log(f"\nload average at end {result['loadavg_end']}")
    log(json.dumps(result))


if __name__ == "__main__":
    main()
