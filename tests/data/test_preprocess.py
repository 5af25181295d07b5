"""The Ray Data preprocessing job: features written, bad input rejected with reasons, nothing lost,
one fused task per block."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import torchaudio

from tests.support import tone
from emogen.config import EMOTIONS, AudioConfig
from emogen.data.features import (
    MAX_ROWS_PER_BLOCK,
    decode_mels,
    featurize_rows,
    manifest_blocks,
    preprocess,
    read_features,
)
from emogen.audio.clips import load_clip
from emogen.audio.mel import LogMelExtractor, db_to_scaled, power_to_db
from emogen.data.datasets import build_manifest, emodb_name, ravdess_name

ROOT = Path(__file__).resolve().parents[2]


def make_bad_input_corpus(root: Path) -> dict[str, str | None]:
    """Every kind of awkward file at once; value = expected reject reason fragment, None = accepted."""
    emo, rav = root / "emodb", root / "ravdess" / "Actor_01"
    emo.mkdir(parents=True)
    rav.mkdir(parents=True)
    expected: dict[str, str | None] = {}

    def add(path: Path, reason: str | None) -> None:
        expected[path.name] = reason

    for i, e in enumerate(EMOTIONS):  # ordinary clips
        p = emo / emodb_name(3, f"a0{i}", e)
        sf.write(p, tone(2.5, 16_000, f0=120 + 20 * i), 16_000, subtype="PCM_16")
        add(p, None)
    p = emo / "03b01Wa.wav"
    p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" + bytes(range(256)) * 4)
    add(p, "not a readable audio file")
    p = emo / "03b02Wa.wav"
    p.write_bytes(b"")
    add(p, "empty file")
    p = emo / "03b03Wa.wav"
    sf.write(p, np.zeros((0,), np.float32), 16_000, subtype="PCM_16")
    add(p, "zero-length audio")
    p = emo / "03b04Wa.wav"
    sf.write(p, np.zeros(16_000 * 2, np.float32), 16_000, subtype="PCM_16")
    add(p, "silent audio")
    p = emo / "03b05Wa.wav"
    nan = tone(2.0, 16_000)
    nan[5000:5100] = np.nan
    sf.write(p, nan, 16_000, subtype="FLOAT")
    add(p, "NaN or infinite")
    p = emo / "03b06Ta.wav"
    sf.write(p, tone(3.0, 44_100, channels=2), 44_100, subtype="PCM_16")
    add(p, None)  # stereo at an odd rate: valid, mixed and resampled
    p = emo / "03b07Ta.wav"
    sf.write(p, tone(2.0, 8_000), 8_000, subtype="PCM_U8")
    add(p, None)  # 8-bit PCM
    p = emo / "03b08Ta.wav"
    sf.write(p, tone(2.0, 16_000), 16_000, subtype="PCM_24")
    add(p, None)  # 24-bit PCM
    p = emo / "03b09Fa.flac"
    sf.write(p, tone(2.0, 16_000), 16_000, format="FLAC")
    add(p, None)
    p = emo / "03b10Fa.wav"
    sf.write(p, tone(600.0, 8_000), 8_000, subtype="PCM_16")
    add(p, None)  # a 10-minute file: accepted, only its centre read
    p = emo / "03b11Xa.wav"
    sf.write(p, tone(2.0, 16_000), 16_000)
    add(p, "unknown EmoDB emotion code")
    p = emo / "03b12La.wav"
    sf.write(p, tone(2.0, 16_000), 16_000)
    add(p, "excluded class: boredom")
    p = emo / "03b13Wa.wav"
    p.symlink_to(root / "does-not-exist.wav")
    add(p, "file not found")
    p = rav / ravdess_name(1, "anger", 2)
    sf.write(p, tone(5.0, 48_000), 48_000, subtype="PCM_16")
    add(p, None)
    p = rav / "03-01-08-01-01-01-01.wav"
    sf.write(p, tone(3.0, 48_000), 48_000, subtype="PCM_16")
    add(p, "excluded class: surprise")
    return expected


@pytest.fixture(scope="module")
def bad_input_run(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("bad_input")
    expected = make_bad_input_corpus(root / "corpus")
    manifest = build_manifest([root / "corpus"])
    summary = preprocess(manifest, root / "out", batch_size=4)
    return expected, manifest, summary, root / "out"


def test_bad_input_nothing_lost(bad_input_run):
    expected, manifest, summary, out = bad_input_run
    assert len(manifest) == len(expected)
    assert summary["input"] == len(expected)
    assert summary["accepted"] + summary["rejected"] == summary["input"]
    assert summary["accepted"] == sum(v is None for v in expected.values())
    rejects = pd.read_csv(out / "rejects.csv", keep_default_na=False)
    assert len(rejects) == summary["rejected"]
    by_name = {Path(p).name: r for p, r in zip(rejects["path"], rejects["reject_reason"])}
    for name, reason in expected.items():
        if reason is None:
            assert name not in by_name, f"{name} was rejected: {by_name.get(name)}"
        else:
            assert reason in by_name[name], f"{name}: expected {reason!r}, got {by_name.get(name)!r}"
    assert json.loads((out / "summary.json").read_text())["rejected"] == summary["rejected"]


def test_accepted_features_are_valid(bad_input_run):
    expected, _, summary, out = bad_input_run
    table = read_features(out)
    mels = decode_mels(table)
    assert len(table) == summary["accepted"]
    assert mels.shape == (len(table), 128, AudioConfig().num_frames)
    assert np.isfinite(mels).all() and mels.min() >= -1 and mels.max() <= 1
    assert set(table["status"]) == {"ok"}
    assert sum(summary["by_emotion"].values()) == summary["accepted"]


def test_pipeline_matches_in_process_featurization(bad_input_run, tmp_path):
    """Ray's output for a clip equals featurize_rows on the same row (no hidden transformation)."""
    _, manifest, _, out = bad_input_run
    table = read_features(out)
    row = manifest[manifest.clip_id == table.clip_id.iloc[0]]
    local = featurize_rows(row, LogMelExtractor())
    np.testing.assert_allclose(decode_mels(local), decode_mels(table.iloc[:1]), atol=1e-5)  # thread count only


def test_pipeline_equals_the_reference_extraction(bad_input_run):
    """Every accepted clip's stored mel equals the extraction the pipeline used before it went
    numpy (load_clip -> torchaudio MelSpectrogram -> dB -> scaled), within float32 noise."""
    cfg = AudioConfig()
    reference_mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, f_min=cfg.f_min, f_max=cfg.f_max,
        n_mels=cfg.n_mels, power=2.0, norm="slaney", mel_scale="slaney", center=True, pad_mode="reflect",
    )
    table = read_features(bad_input_run[3])
    with torch.no_grad():
        reference = np.stack([db_to_scaled(power_to_db(reference_mel(torch.from_numpy(load_clip(p, cfg)))), cfg).numpy()
                              for p in table["path"]])
    np.testing.assert_allclose(decode_mels(table), reference, rtol=0, atol=2e-4)  # 0.012 dB


def test_blocks_files_and_schema(bad_input_run):
    """One Parquet file per block, every row of the manifest in exactly one, one schema for all
    (a block of nothing but rejects included)."""
    _, manifest, _, out = bad_input_run
    files = sorted((out / "features").glob("*.parquet"))
    assert len(files) == len(manifest_blocks(len(manifest), 2, 4))  # batch_size=4 on the 2-CPU session
    schemas = {pq.read_schema(f).remove_metadata().to_string() for f in files}
    assert len(schemas) == 1
    ids = pd.concat([pq.read_table(f, columns=["clip_id"]).to_pandas() for f in files])["clip_id"]
    assert sorted(ids) == sorted(manifest["clip_id"])


@pytest.mark.parametrize("count,cpus,cap,expected", [
    (444, 2, None, [56] * 4 + [55] * 4),  # the demo corpus: 4 blocks per CPU
    (2220, 2, None, [124] * 6 + [123] * 12),  # large: capped at MAX_ROWS_PER_BLOCK
    (21, 2, 4, [3] * 7),
    (3, 2, None, [1, 1, 1]),
    (0, 2, None, [0]),
    (100, 1, 16, [15] * 2 + [14] * 5),
])
def test_manifest_blocks(count, cpus, cap, expected):
    blocks = manifest_blocks(count, cpus, cap)
    assert [len(b) for b in blocks] == expected
    assert np.array_equal(np.concatenate(blocks), np.arange(count))
    assert max(len(b) for b in blocks) <= (cap or MAX_ROWS_PER_BLOCK)


def test_header_columns_come_from_the_workers(bad_input_run):
    """source_sr, channels and source_s in the features equal the driver's header reads for
    every row, accepted or rejected (NaN where a file has no header): the workers fill them,
    so a corpus on object storage, whose headers the driver never opens, gets the same."""
    _, manifest, _, out = bad_input_run
    table = pq.read_table(out / "features").to_pandas().set_index("clip_id").loc[manifest["clip_id"]]
    for column in ("source_sr", "channels", "source_s"):
        np.testing.assert_allclose(table[column].to_numpy(), manifest[column].to_numpy(), equal_nan=True)
    assert table["source_sr"].isna().any() and table["source_sr"].notna().any()  # both kinds are in the corpus
    unread = manifest.assign(source_sr=math.nan, channels=math.nan, source_s=math.nan)
    again = featurize_rows(unread.iloc[:3], LogMelExtractor())  # what the workers do for a URI manifest
    np.testing.assert_allclose(again["source_sr"].to_numpy(), manifest["source_sr"].iloc[:3].to_numpy(), equal_nan=True)


def test_read_map_and_write_run_as_one_task_per_block(bad_input_run, ray_session, tmp_path):
    """The plan Ray Data executes fuses featurizing and the Parquet write into one task per
    block (no separate Write stage moving mels through the object store), with the CLI's
    --concurrency as well."""
    _, manifest, _, _ = bad_input_run
    context = ray_session.data.DataContext.get_current()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    executor_log = logging.getLogger("ray.data._internal.execution.streaming_executor")
    executor_log.addHandler(handler)
    previous, context.print_on_execution_start = context.print_on_execution_start, True
    try:
        preprocess(manifest, tmp_path / "out", batch_size=8, concurrency=2)
    finally:
        context.print_on_execution_start = previous
        executor_log.removeHandler(handler)
    plans = [r.split(": ", 1)[1] for r in records if r.startswith("Execution plan of Dataset")]
    assert plans == ["InputDataBuffer[Input] -> TaskPoolMapOperator[MapBatches(featurize_block)->Write]"]
    assert len(list((tmp_path / "out" / "features").glob("*.parquet"))) == len(manifest_blocks(len(manifest), 2, 8))


def test_empty_manifest_writes_an_empty_table(tmp_path, write_wav):
    """Nothing to featurize is not an error (and needs no Ray): an empty table, zero counts."""
    write_wav(tmp_path / "in" / emodb_name(3, "a01", "anger"))
    summary = preprocess(build_manifest([tmp_path / "in"]).iloc[:0], tmp_path / "out")
    assert (summary["input"], summary["accepted"], summary["rejected"]) == (0, 0, 0)
    assert read_features(tmp_path / "out").empty


def test_workers_import_no_torch():
    """What a preprocessing task imports stays free of torch (~1.7 s and ~650 MB per worker)."""
    code = "import sys, emogen.data.features, emogen.audio.clips; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_rerun_overwrites_instead_of_appending(bad_input_run, ray_session):
    expected, manifest, _, out = bad_input_run
    again = preprocess(manifest, out, batch_size=8)
    assert again["input"] == len(expected) == again["accepted"] + again["rejected"]
    assert len(read_features(out)) == again["accepted"]


def test_preprocess_job_cli(tmp_path, write_wav):
    """jobs/preprocess.py as a user runs it: its own local Ray, a one-line JSON summary last."""
    for e in EMOTIONS[:3]:
        write_wav(tmp_path / "in" / emodb_name(8, "a01", e))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "preprocess.py"), "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / "out"), "--num-cpus", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["accepted"] == 3 and summary["rejected"] == 0
    # progress is logged on stderr (a bad format argument would print "--- Logging error ---")
    assert "[preprocess] 3 files, 3 labelled" in proc.stderr and "Logging error" not in proc.stderr
    assert "\r" not in proc.stderr  # no progress bars redrawn into a file
    assert (tmp_path / "out" / "manifest.csv").exists()
