"""The feature pipeline (manifest -> decode -> standardize -> log-mel -> Parquet, on Ray
Data) and the readers of what it writes (`read_features`, `decode_mels`), plus
`write_generated_features`, which writes generated mels in the same schema.

The output is one Parquet dataset with a row per input file, accepted or rejected:

    <manifest columns>, status ("ok" | "rejected"), reject_reason, n_mels, n_frames, mel

``mel`` holds the scaled log-mel as float32 bytes (C order, [n_mels, n_frames]); it is
empty for rejected rows. Keeping rejects in the same table makes the accounting hold by
construction (accepted + rejected = input) and the readers below filter on ``status``.
Beside it: ``rejects.csv`` (human-readable reasons) and ``summary.json``.

Every location (the output, the features, the audio files the manifest names) is a local
path or a storage URI (``s3://bucket/prefix``), read and written through emogen.storage
and pyarrow's file systems; nothing assumes a file system shared by the nodes.

The manifest becomes a Ray Dataset of a few blocks per CPU; one Ray Data task per block
featurizes it (`featurize_block`) and writes it as one Parquet file, so mels go from the
worker straight to storage (never through the object store) and the workers import
numpy, soundfile and soxr but not torch (``emogen.audio.clips``).
"""

from __future__ import annotations

import ctypes
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from emogen import storage
from emogen.audio.clips import LogMel, RejectedClip, load_clip_and_info, read_source_info, source_columns
from emogen.config import EMOTIONS, AudioConfig
from emogen.errors import MissingInputError

FEATURES_DIR = "features"
STATUS_OK = "ok"
STATUS_REJECTED = "rejected"
# The most rows one task featurizes and writes as one Parquet file: ~11 MB of mels, so a
# worker's memory stays the same however large the corpus, in blocks large enough that
# Ray Data's cost per task is small beside them (benchmarks/README.md).
MAX_ROWS_PER_BLOCK = 128
# Small corpora are cut finer, into this many blocks per CPU, so that no CPU idles while
# another finishes a long last block.
BLOCKS_PER_CPU = 4
# The manifest columns featurize_rows fills from each file's header.
SOURCE_COLUMNS = ("source_sr", "channels", "source_s")


# ------------------------------------------------------------------ per-clip features


def featurize_rows(rows: pd.DataFrame, extractor: LogMel) -> pd.DataFrame:
    """Decode, standardize and extract log-mels for manifest rows; never raises per clip.

    ``extractor``: a LogMel, or anything with its ``cfg`` and call (emogen.audio.mel's
    LogMelExtractor, whose CPU tensors np.asarray reads without a copy). Rows already
    rejected by their label are not decoded, only their header is read. Every row's
    source_sr, channels and source_s come from its file's header as read here (NaN when
    it has none), so they are the same whether the driver read the headers (local
    corpora) or not (object storage). Mels are computed one clip at a time: a clip's
    STFT fits in cache, a batch of hundreds does not.
    """
    cfg = extractor.cfg
    out = rows.copy()
    status, reasons, mels, sources = [], [], [], []
    for path, reason in zip(rows["path"], rows["reject_reason"]):
        mel, info = b"", None
        try:
            if reason:
                info = read_source_info(path)
            else:
                wave, info = load_clip_and_info(path, cfg)
                mel = np.asarray(extractor(wave), dtype=np.float32).tobytes()
        except RejectedClip as exc:
            reason, info = reason or str(exc), exc.source
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop the job
            reason = reason or f"unexpected error while decoding: {type(exc).__name__}: {exc}"
        status.append(STATUS_REJECTED if reason else STATUS_OK)
        reasons.append(reason)
        mels.append(mel)
        sources.append(source_columns(info))
    out["status"] = status
    out["reject_reason"] = reasons
    headers = np.asarray(sources, dtype=np.float64).reshape(len(rows), len(SOURCE_COLUMNS))
    for index, name in enumerate(SOURCE_COLUMNS):
        out[name] = headers[:, index]
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


def featurize_block(rows: pd.DataFrame, cfg: AudioConfig, schema: pa.Schema) -> pa.Table:
    """featurize_rows on one block of the manifest, as the Ray Data task runs it: a table
    in the features schema, which the same task then writes as one Parquet file."""
    keep_freed_memory_for_reuse()
    table = featurize_rows(rows, log_mel_for(cfg))
    return pa.Table.from_pandas(table, schema=schema, preserve_index=False)


def manifest_blocks(count: int, cpus: int, max_rows: int | None = None) -> list[np.ndarray]:
    """Row positions per block: at most max_rows (default MAX_ROWS_PER_BLOCK) rows each,
    and at least BLOCKS_PER_CPU blocks per CPU while the corpus is small."""
    max_rows = max_rows or MAX_ROWS_PER_BLOCK
    rows = max(1, min(max_rows, -(-count // (cpus * BLOCKS_PER_CPU))))
    return np.array_split(np.arange(count), max(1, -(-count // rows)))


# ------------------------------------------------------------------------ pipeline


def preprocess(
    manifest: pd.DataFrame,
    output: str | Path,
    cfg: AudioConfig = AudioConfig(),
    batch_size: int | None = None,
    concurrency: int | None = None,
) -> dict[str, Any]:
    """Featurize a manifest on Ray Data and write features + rejects + summary under
    ``output`` (a local folder or a storage URI).

    ``batch_size`` caps the rows of one block (one task, one Parquet file; default
    MAX_ROWS_PER_BLOCK); ``concurrency`` caps the blocks featurized at once (default: as
    many as the cluster's CPUs run). Streaming: each task featurizes and writes its own
    block, so memory stays flat however large the corpus. A rerun replaces the features.
    Needs ray.init() first (or connects/starts Ray on first use). Returns the summary dict.
    """
    start = time.time()
    output = storage.absolute(output)
    features = storage.join(output, FEATURES_DIR)
    storage.remove(features)  # a rerun replaces the features, it never appends to them
    storage.make_dirs(output)
    schema = features_schema(manifest)
    if len(manifest):
        write_features(manifest, features, cfg, schema, batch_size, concurrency)
    else:  # nothing to featurize: an empty table still says what the columns are
        _write_table(schema.empty_table(), storage.join(features, "empty.parquet"))
    summary = summarize(output, input_count=len(manifest), seconds=time.time() - start)
    written = summary["accepted"] + summary["rejected"]
    if written != len(manifest):  # accepted + rejected = input, counted in the files, or fail loudly
        raise RuntimeError(f"preprocess wrote {written} rows for {len(manifest)} manifest rows")
    storage.write_text(storage.join(output, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def write_features(manifest: pd.DataFrame, features: str, cfg: AudioConfig, schema: pa.Schema,
                   batch_size: int | None = None, concurrency: int | None = None) -> None:
    """The manifest featurized and written to ``features`` by one Ray Data job: the blocks
    of `manifest_blocks` -> map_batches(featurize_block) -> write_parquet, which Ray Data
    fuses into one task per block (the plan reads ``MapBatches(featurize_block)->Write``)."""
    import ray  # deferred: only preprocessing runs Ray; the readers below are used without it

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    running = concurrency or cpus
    # Ray runs at most `cpus` of these 1-CPU tasks at once. When the cap covers them all, a
    # second block per CPU waits in Ray's queue, so a worker starts its next block without
    # a round trip through Ray Data's scheduling loop; a smaller cap is a real limit.
    in_flight = 2 * running if running >= cpus else running
    blocks = manifest_blocks(len(manifest), running, batch_size)
    # from_items cuts the rows into blocks as manifest_blocks does, on the driver; from_pandas
    # would first run a task per block to read its metadata (slower for a large manifest,
    # and the CPUs those tasks still hold read as "no available CPUs" to the executor)
    dataset = ray.data.from_items(manifest.to_dict("records"), override_num_blocks=len(blocks))
    configure_execution(dataset.context)
    fs, path = storage.filesystem(features)
    dataset.map_batches(
        featurize_block, fn_kwargs={"cfg": cfg, "schema": schema}, batch_size=None, batch_format="pandas",
        zero_copy_batch=True, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=in_flight),
    ).write_parquet(path, filesystem=fs, concurrency=in_flight)  # the same cap, or the two would not fuse


def configure_execution(context: Any) -> None:
    """The Ray Data settings of the preprocessing job (a DataContext it alone uses).

    No progress bars (a redraw loop in the driver competes for the CPUs the tasks use,
    and a job's log is a file) and no order kept (the readers sort by clip_id). No
    per-operator resource reservation: it budgets tasks from the cluster's resources as
    Ray Data's autoscaling coordinator reports them, a report that arrives asynchronously
    and is cached for a second, so every execution would start with a budget of zero CPUs
    and run one task at a time (for seconds in a fresh Ray, until the coordinator actor is
    up; benchmarks/README.md). With one operator whose outputs are a few hundred bytes of
    write statistics there is nothing for it to protect; the concurrency cap bounds the
    tasks in flight instead. Ray Data still logs the plan it runs ("Execution plan of
    Dataset ...") unless the caller's context says not to.
    """
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False
    context.op_resource_reservation_enabled = False


def _write_table(table: pa.Table, location: str) -> None:
    """One Parquet file at a location, whole or not at all."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(location, sink.getvalue())


def summarize(output: str | Path, input_count: int, seconds: float) -> dict[str, Any]:
    """Counts from the written table (not from memory), and rejects.csv beside it."""
    output = storage.absolute(output)
    features = storage.join(output, FEATURES_DIR)
    table = _dataset(features).to_table(
        columns=["clip_id", "path", "dataset", "emotion", "status", "reject_reason"]
    ).to_pandas()
    ok = table["status"] == STATUS_OK
    rejects = table.loc[~ok, ["clip_id", "path", "dataset", "reject_reason"]].sort_values("clip_id")
    rejects_location = storage.write_text(storage.join(output, "rejects.csv"), rejects.to_csv(index=False))
    reasons = rejects["reject_reason"].str.split(":").str[0].value_counts().to_dict()
    return {
        "input": int(input_count),
        "accepted": int(ok.sum()),
        "rejected": int((~ok).sum()),
        "by_emotion": {e: int((table.loc[ok, "emotion"] == e).sum()) for e in EMOTIONS},
        "by_dataset": {k: int(v) for k, v in table.loc[ok, "dataset"].value_counts().sort_index().items()},
        "reject_reasons": {k: int(v) for k, v in sorted(reasons.items())},
        "seconds": round(seconds, 2),
        "features": features,
        "rejects": rejects_location,
    }


# ------------------------------------------------------------------------- readers


def features_dir(path: str | Path) -> str:
    """The features dataset (a location) of a preprocess output folder or prefix, or that
    dataset itself; a missing one is the user's --data pointing elsewhere, reported before
    Ray starts."""
    location = storage.absolute(path)
    inner = storage.join(location, FEATURES_DIR)
    if storage.is_dir(inner):
        return inner
    if not storage.exists(location):
        raise MissingInputError(f"no features at {path}: run `emogen preprocess` first")
    return location


def _dataset(location: str) -> pads.Dataset:
    """The Parquet dataset at a location, on whichever file system holds it."""
    fs, path = storage.filesystem(location)
    with storage.reporting(location):
        return pads.dataset(path, filesystem=fs, format="parquet")


def read_features(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The accepted rows of a features dataset (a preprocess output or its features/,
    local or on object storage)."""
    location = features_dir(path)
    with storage.reporting(location):
        table = _dataset(location).to_table(columns=columns, filter=pads.field("status") == STATUS_OK)
    return table.to_pandas().sort_values("clip_id", kind="stable").reset_index(drop=True)


def decode_mels(table: pd.DataFrame | dict[str, np.ndarray]) -> np.ndarray:
    """The ``mel`` byte column (of a DataFrame or a numpy batch) -> float32 [N, n_mels, n_frames]."""
    count = len(table["mel"])
    if count == 0:
        return np.zeros((0, 0, 0), dtype=np.float32)
    n_mels, n_frames = int(np.asarray(table["n_mels"])[0]), int(np.asarray(table["n_frames"])[0])
    flat = np.frombuffer(b"".join(table["mel"]), dtype=np.float32)
    return flat.reshape(count, n_mels, n_frames).copy()


def write_generated_features(mels: np.ndarray, labels: np.ndarray, out_dir: str | Path, source: str) -> str:
    """Generated mels -> a features dataset (one Parquet file) in the preprocessing schema,
    under out_dir (a local folder or a storage URI); returns the dataset's location.

    Speakers are "<source>:generated", so no generated clip can land in a held-out
    speaker split; clip ids are "<source>/<emotion>_<index>".
    """
    out = storage.join(storage.absolute(out_dir), FEATURES_DIR)
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
    _write_table(pa.Table.from_pandas(table, preserve_index=False), storage.join(out, "generated.parquet"))
    return out
