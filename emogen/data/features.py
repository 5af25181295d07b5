"""The feature pipeline (manifest -> decode -> standardize -> log-mel -> Parquet, with Ray
tasks) and the readers of what it writes (`read_features`, `decode_mels`), plus
`write_generated_features`, which writes generated mels in the same schema.

The output is one Parquet dataset with a row per input file, accepted or rejected:

    <manifest columns>, status ("ok" | "rejected"), reject_reason, n_mels, n_frames, mel

``mel`` holds the scaled log-mel as float32 bytes (C order, [n_mels, n_frames]); it is
empty for rejected rows. Keeping rejects in the same table makes the accounting hold by
construction (accepted + rejected = input) and the readers below filter on ``status``.
Beside it: ``rejects.csv`` (human-readable reasons) and ``summary.json``.

Each Ray task featurizes one part of the manifest and writes it as one Parquet file, so
mels go from the worker straight to disk (never through the object store) and the workers
import numpy, soundfile and soxr but not torch (``emogen.audio.clips``).
"""

from __future__ import annotations

import ctypes
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from emogen.audio.clips import LogMel, RejectedClip, load_clip
from emogen.config import EMOTIONS, AudioConfig
from emogen.errors import MissingInputError

FEATURES_DIR = "features"
STATUS_OK = "ok"
STATUS_REJECTED = "rejected"
# The most rows one task featurizes and writes as one Parquet file: ~5.7 MB of mels, so a
# worker's memory stays the same however large the corpus.
MAX_ROWS_PER_PART = 64
# Small corpora are cut finer, into this many parts per CPU, so that no CPU idles while
# another finishes a long last part.
PARTS_PER_CPU = 4


# ------------------------------------------------------------------ per-clip features


def featurize_rows(rows: pd.DataFrame, extractor: LogMel) -> pd.DataFrame:
    """Decode, standardize and extract log-mels for manifest rows; never raises per clip.

    ``extractor``: a LogMel, or anything with its ``cfg`` and call (emogen.audio.mel's
    LogMelExtractor, whose CPU tensors np.asarray reads without a copy). Rows already
    rejected by their label pass through untouched (they are not decoded). Mels are
    computed one clip at a time: a clip's STFT fits in cache, a batch of hundreds does not.
    """
    cfg = extractor.cfg
    out = rows.copy()
    status, reasons, mels = [], [], []
    for path, reason in zip(rows["path"], rows["reject_reason"]):
        mel = b""
        if not reason:
            try:
                mel = np.asarray(extractor(load_clip(path, cfg)), dtype=np.float32).tobytes()
            except RejectedClip as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - a bad file must never stop the job
                reason = f"unexpected error while decoding: {type(exc).__name__}: {exc}"
        status.append(STATUS_REJECTED if reason else STATUS_OK)
        reasons.append(reason)
        mels.append(mel)
    out["status"] = status
    out["reject_reason"] = reasons
    out["n_mels"] = np.int32(cfg.n_mels)
    out["n_frames"] = np.int32(cfg.num_frames)
    out["mel"] = mels
    return out


_LOG_MELS: dict[AudioConfig, LogMel] = {}


def log_mel_for(cfg: AudioConfig) -> LogMel:
    """One LogMel (its filterbank and window computed once) per config and process: a
    worker reuses it for every part it is given."""
    if cfg not in _LOG_MELS:
        _LOG_MELS[cfg] = LogMel(cfg)
    return _LOG_MELS[cfg]


def features_schema(manifest: pd.DataFrame) -> pa.Schema:
    """The output table's schema: the manifest's columns (typed from the whole manifest,
    so a part whose optional column happens to be all-empty is written with the same types
    as the rest) and the feature columns featurize_rows adds, in its order."""
    schema = pa.Schema.from_pandas(manifest, preserve_index=False).remove_metadata()
    for field in (pa.field("status", pa.large_string()), pa.field("reject_reason", pa.large_string()),
                  pa.field("n_mels", pa.int32()), pa.field("n_frames", pa.int32()), pa.field("mel", pa.binary())):
        index = schema.get_field_index(field.name)
        schema = schema.set(index, field) if index >= 0 else schema.append(field)
    return schema


_ALLOCATOR_TUNED = False


def keep_freed_memory_for_reuse() -> None:
    """Serve a clip's temporaries from the heap instead of fresh mmaps (glibc; else a no-op).

    Decoded samples, the resampled wave, STFT frames and spectrum are each above glibc's
    initial mmap threshold (128 KB), so in a fresh process (a Ray worker) each would be
    mapped, page-faulted in and unmapped again for every clip, which costs more than the
    features themselves. Once per process; the heap then keeps up to 64 MB of freed memory
    for reuse.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
        libc.mallopt(m_mmap_threshold, 16 << 20)
        libc.mallopt(m_trim_threshold, 64 << 20)
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        pass


def featurize_part(rows: pd.DataFrame, cfg: AudioConfig, path: str, schema: pa.Schema) -> int:
    """featurize_rows on one part of the manifest, written to one Parquet file; returns the
    rows written (the summary counts accepted and rejected from the files themselves).

    Runs as a Ray task. Rewriting the same path is harmless, so Ray may retry it after a
    worker crash.
    """
    keep_freed_memory_for_reuse()
    table = featurize_rows(rows, log_mel_for(cfg))
    pq.write_table(pa.Table.from_pandas(table, schema=schema, preserve_index=False), path)
    return len(table)


def manifest_parts(count: int, concurrency: int, max_rows: int | None = None) -> list[np.ndarray]:
    """Row positions per part: at most max_rows (default MAX_ROWS_PER_PART) rows each,
    and at least PARTS_PER_CPU parts per CPU while the corpus is small."""
    max_rows = max_rows or MAX_ROWS_PER_PART
    rows = max(1, min(max_rows, -(-count // (concurrency * PARTS_PER_CPU))))
    return np.array_split(np.arange(count), max(1, -(-count // rows)))


# ------------------------------------------------------------------------ pipeline


def preprocess(
    manifest: pd.DataFrame,
    output: str | Path,
    cfg: AudioConfig = AudioConfig(),
    batch_size: int | None = None,
    concurrency: int | None = None,
) -> dict[str, Any]:
    """Featurize a manifest with Ray tasks and write features + rejects + summary.

    ``batch_size`` caps the rows of one part (one task, one Parquet file; default
    MAX_ROWS_PER_PART); ``concurrency`` is how many parts run at once (default: the
    cluster's free CPUs). Streaming: a bounded number of parts is in flight and each task
    writes its own file, so memory stays flat however large the corpus. Needs ray.init()
    first (or connects/starts Ray on first use). Returns the summary dict.

    Plain tasks, not a Ray Data pool: tasks start in Ray's already-running workers, while
    a fresh actor pool pays its start-up before the first clip, and both Ray Data pools
    were slower on the demo and large corpora (benchmarks/README.md).
    """
    start = time.time()
    output = Path(output)
    written = _write_parts(manifest, output / FEATURES_DIR, cfg, batch_size, concurrency)
    if written != len(manifest):  # accepted + rejected = input, or fail loudly
        raise RuntimeError(f"preprocess wrote {written} rows for {len(manifest)} manifest rows")
    summary = summarize(output, input_count=len(manifest), seconds=time.time() - start)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_parts(manifest: pd.DataFrame, features_dir: Path, cfg: AudioConfig,
                 batch_size: int | None, concurrency: int | None) -> int:
    """features_dir replaced by one Parquet file per part of the manifest, each written by
    a `featurize_part` task, a bounded number in flight; returns the rows written."""
    import ray  # deferred: only preprocessing runs Ray tasks; the readers below are used without Ray

    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    concurrency = concurrency or cpus
    # Ray runs at most `cpus` of these 1-CPU tasks at once. When concurrency covers them
    # all, a second part per slot waits in Ray's queue, so a worker starts its next part
    # without a round trip through this loop; a smaller concurrency is a real limit.
    in_flight = 2 * concurrency if concurrency >= cpus else concurrency
    if features_dir.exists():  # a rerun replaces the features, it never appends to them
        shutil.rmtree(features_dir)
    features_dir.mkdir(parents=True)
    schema = features_schema(manifest)
    featurize = ray.remote(num_cpus=1)(featurize_part)
    pending: list[Any] = []
    counts: list[int] = []
    for number, positions in enumerate(manifest_parts(len(manifest), concurrency, batch_size)):
        if len(pending) >= in_flight:  # the next part goes out when one finishes
            done, pending = ray.wait(pending, num_returns=1)
            counts += ray.get(done)
        path = str(features_dir / f"part-{number:05d}.parquet")
        pending.append(featurize.remote(manifest.iloc[positions], cfg, path, schema))
    counts += ray.get(pending)
    return sum(counts)


def summarize(output: str | Path, input_count: int, seconds: float) -> dict[str, Any]:
    """Counts from the written table (not from memory), and rejects.csv beside it."""
    output = Path(output)
    table = pads.dataset(str(output / FEATURES_DIR), format="parquet").to_table(
        columns=["clip_id", "path", "dataset", "emotion", "status", "reject_reason"]
    ).to_pandas()
    ok = table["status"] == STATUS_OK
    rejects = table.loc[~ok, ["clip_id", "path", "dataset", "reject_reason"]].sort_values("clip_id")
    rejects.to_csv(output / "rejects.csv", index=False)
    reasons = rejects["reject_reason"].str.split(":").str[0].value_counts().to_dict()
    return {
        "input": int(input_count),
        "accepted": int(ok.sum()),
        "rejected": int((~ok).sum()),
        "by_emotion": {e: int((table.loc[ok, "emotion"] == e).sum()) for e in EMOTIONS},
        "by_dataset": {k: int(v) for k, v in table.loc[ok, "dataset"].value_counts().sort_index().items()},
        "reject_reasons": {k: int(v) for k, v in sorted(reasons.items())},
        "seconds": round(seconds, 2),
        "features": str(output / FEATURES_DIR),
        "rejects": str(output / "rejects.csv"),
    }


# ------------------------------------------------------------------------- readers


def features_dir(path: str | Path) -> Path:
    """The features dataset of a preprocess output folder (or that dataset itself); a
    missing one is the user's --data pointing elsewhere, reported before Ray starts."""
    path = Path(path)
    if (path / FEATURES_DIR).is_dir():
        path = path / FEATURES_DIR
    if not path.exists():
        raise MissingInputError(f"no features at {path}: run `emogen preprocess` first")
    return path


def read_features(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The accepted rows of a features dataset (a preprocess output dir or its features/)."""
    path = features_dir(path)
    dataset = pads.dataset(str(path), format="parquet")
    table = dataset.to_table(columns=columns, filter=pads.field("status") == STATUS_OK)
    return table.to_pandas().sort_values("clip_id", kind="stable").reset_index(drop=True)


def decode_mels(table: pd.DataFrame | dict[str, np.ndarray]) -> np.ndarray:
    """The ``mel`` byte column (of a DataFrame or a numpy batch) -> float32 [N, n_mels, n_frames]."""
    count = len(table["mel"])
    if count == 0:
        return np.zeros((0, 0, 0), dtype=np.float32)
    n_mels, n_frames = int(np.asarray(table["n_mels"])[0]), int(np.asarray(table["n_frames"])[0])
    flat = np.frombuffer(b"".join(table["mel"]), dtype=np.float32)
    return flat.reshape(count, n_mels, n_frames).copy()


def write_generated_features(mels: np.ndarray, labels: np.ndarray, out_dir: str | Path, source: str) -> Path:
    """Generated mels -> a features dataset (one Parquet file) in the preprocessing schema.

    Speakers are "<source>:generated", so no generated clip can land in a held-out
    speaker split; clip ids are "<source>/<emotion>_<index>".
    """
    out = Path(out_dir) / FEATURES_DIR
    out.mkdir(parents=True, exist_ok=True)
    mels = np.asarray(mels, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    emotions = [EMOTIONS[k] for k in labels]
    n = len(mels)
    table = pd.DataFrame(
        {
            "clip_id": [f"{source}/{e}_{i:05d}" for i, e in enumerate(emotions)],
            "path": [""] * n,
            "dataset": [source] * n,
            "speaker": [f"{source}:generated"] * n,
            "emotion": emotions,
            "label": labels,
            "source_sr": np.nan,
            "channels": np.nan,
            "source_s": np.nan,
            "reject_reason": [""] * n,
            "status": [STATUS_OK] * n,
            "n_mels": np.int32(mels.shape[1] if n else 0),
            "n_frames": np.int32(mels.shape[2] if n else 0),
            "mel": [m.tobytes() for m in mels],
        }
    )
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), out / "generated.parquet")
    return out
