"""The synthetic demo corpus: names and formats the real loaders accept, determinism,
plausible audio, and emotion that is learnable across speakers but not trivially."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from emogen.config import EMOTIONS
from emogen.data.corpus import CORPUS_PRESETS, generate_corpus, make_speaker, plan_corpus
from emogen.data.datasets import scan_folder, summarize_labels
from emogen.data.voice import MAX_SECONDS, MIN_SECONDS, make_script, synthesize_utterance

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return out, generate_corpus(out, "tiny", seed=0)


def _load_calibration():
    spec = importlib.util.spec_from_file_location("corpus_calibration", ROOT / "benchmarks" / "corpus_calibration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------- layout, formats


def test_tiny_layout_and_formats(tiny):
    out, table = tiny
    assert len(table) == len(list(out.rglob("*.wav")))
    for row in table.itertuples():
        path = Path(row.path)
        assert path.is_file()
        info = sf.info(str(path))
        assert info.channels == 1
        assert info.subtype == "PCM_16" and info.format == "WAV"
        if row.dataset == "emodb":
            assert path.parent == out / "emodb" / "wav" and info.samplerate == 16_000
        else:
            assert path.parent.parent == out / "ravdess" and path.parent.name.startswith("Actor_")
            assert path.parent.name == f"Actor_{path.stem[-2:]}" and info.samplerate == 48_000
        assert info.samplerate == row.sample_rate
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["preset"] == "tiny" and meta["seed"] == 0 and meta["generator_version"]
    assert sum(sum(c.values()) for c in meta["counts"].values()) == len(table)


def test_tiny_is_parsed_by_the_real_loader(tiny):
    out, table = tiny
    manifest = scan_folder(out)
    assert len(manifest) == len(table)
    rejected = manifest[manifest["reject_reason"] != ""]
    assert set(table.loc[~table["emotion"].isin(EMOTIONS), "path"]) == set(rejected["path"])
    assert rejected["reject_reason"].str.contains("excluded class").all()
    summary = summarize_labels(manifest)
    assert summary["label_errors"] == 0
    assert all(summary["excluded"][e] > 0 for e in ("boredom", "calm", "surprise"))
    accepted = manifest[manifest["reject_reason"] == ""]
    # The loader's speaker ids agree with the generator's, and every speaker has all six.
    assert set(accepted["speaker"]) == set(table["speaker"])
    for speaker, rows in accepted.groupby("speaker"):
        assert set(rows["emotion"]) == set(EMOTIONS), speaker


def test_presets_sizes():
    sizes = {name: len(plan_corpus(name)) for name in CORPUS_PRESETS}
    assert sizes["tiny"] < 100 < sizes["demo"] < 1000 < 2000 <= sizes["large"]


# ----------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_any_worker_count(tiny, tmp_path):
    out, table = tiny
    again = generate_corpus(tmp_path / "again", "tiny", seed=0, workers=2)
    assert len(again) == len(table)
    for a, b in zip(table["path"], again["path"]):
        assert Path(a).relative_to(out) == Path(b).relative_to(tmp_path / "again")
        assert Path(a).read_bytes() == Path(b).read_bytes()


def test_different_seed_different_audio(tiny, tmp_path):
    out, table = tiny
    other = generate_corpus(tmp_path / "other", "tiny", seed=1)
    assert list(other["path"].map(lambda p: Path(p).name)) == list(table["path"].map(lambda p: Path(p).name))
    differing = sum(Path(a).read_bytes() != Path(b).read_bytes() for a, b in zip(table["path"], other["path"]))
    assert differing == len(table)


def test_synthesize_utterance_is_a_pure_function_of_the_rng():
    speaker = make_speaker("emodb", 3, female=False, seed=0)
    script = make_script((0, 1, 97, 1), 10)
    a = synthesize_utterance(speaker, "anger", np.random.default_rng(5), script)
    b = synthesize_utterance(speaker, "anger", np.random.default_rng(5), script)
    c = synthesize_utterance(speaker, "anger", np.random.default_rng(6), script)
    assert a.dtype == np.float32 and a.ndim == 1
    assert np.array_equal(a, b) and not np.array_equal(a[: len(c)], c[: len(a)])


# ---------------------------------------------------------------------- audio sanity


def test_audio_sanity(tiny):
    _, table = tiny
    for row in table.itertuples():
        wave, sr = sf.read(row.path, dtype="float32")
        assert np.isfinite(wave).all()
        peak = np.abs(wave).max()
        assert 0.25 < peak < 0.95, (row.path, peak)
        assert np.sqrt(np.mean(wave**2)) > 0.01
        assert MIN_SECONDS - 0.01 <= len(wave) / sr <= MAX_SECONDS + 0.01
    # Durations vary so that 4-s standardization both pads and crops.
    assert table["seconds"].min() < 4.0 < table["seconds"].max()


def _median_f0(path: str) -> float:
    wave, sr = sf.read(path, dtype="float32")
    if sr != 16_000:
        wave = librosa.resample(wave, orig_sr=sr, target_sr=16_000)
    f0 = librosa.yin(wave, fmin=60, fmax=600, sr=16_000, frame_length=1024, hop_length=256)
    rms = librosa.feature.rms(y=wave, frame_length=1024, hop_length=256)[0]
    n = min(len(f0), len(rms))
    return float(np.median(f0[:n][rms[:n] > 0.1 * rms.max()]))


def test_high_arousal_emotions_have_higher_pitch_than_sadness(tiny):
    _, table = tiny
    table = table[table["emotion"].isin(["anger", "happiness", "fear", "sadness"])].copy()
    table["f0"] = [_median_f0(p) for p in table["path"]]
    per_speaker = table.pivot_table(index="speaker", columns="emotion", values="f0", aggfunc="mean")
    high = per_speaker[["anger", "happiness", "fear"]].mean(axis=1)
    assert (high > 1.15 * per_speaker["sadness"]).all(), per_speaker


# ----------------------------------------------------------------------- calibration


def test_emotion_is_learnable_across_speakers_but_not_trivially(tmp_path):
    calibration = _load_calibration()
    table = generate_corpus(tmp_path / "demo", "demo", seed=3, workers=2)
    x = calibration.clip_features(list(table["path"][:3]))
    assert x.shape == (3, 256)
    result = calibration.grouped_accuracy(table)
    assert result["speakers"] >= 10
    assert 0.35 < result["accuracy"] < 0.95, result
