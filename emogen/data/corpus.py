"""The embedded demo corpus: a synthetic, deterministic stand-in for EmoDB and RAVDESS.

The real corpora cannot be downloaded on our machines, yet every loader, the resampling
path and the speaker-independent split need realistic input. So each size preset
(`CORPUS_PRESETS`: tiny for tests, demo, large for throughput benchmarks) plans speakers,
texts and emotions, `emogen.data.voice` speaks each clip with the emotion where it lives
in real acted speech (F0 level, range and contour, speaking rate, pauses, loudness
contrast, spectral tilt, breathiness, jitter/shimmer), and the clips are written under
the real file-name schemes and sample rates (EmoDB: 16 kHz, RAVDESS: 48 kHz, both 16-bit
PCM mono). The classes overlap as in real data (happiness~anger~fear on arousal,
sadness~neutral~disgust at low arousal), so a classifier must generalize across voices;
``benchmarks/corpus_calibration.py`` measures how learnable the emotions are (its results
are in benchmarks/README.md).
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from emogen.config import EMOTIONS
from emogen.data.datasets import emodb_name, ravdess_name
from emogen.data.voice import Speaker, make_script, synthesize_utterance

# Bump whenever a change here or in emogen.data.voice alters the audio: corpus.json
# records it, so a cached corpus from an older generator is recognisably stale.
GENERATOR_VERSION = "1"

EMODB_SR = 16_000
RAVDESS_SR = 48_000

# How strongly RAVDESS intensity codes push the delivery away from neutral.
INTENSITY_GAIN = {1: 0.75, 2: 1.25}

# Real EmoDB speaker ids and sexes; RAVDESS actors are male when odd.
EMODB_SPEAKERS: dict[int, bool] = {3: False, 8: True, 9: True, 10: False, 11: False, 12: False, 13: True, 14: True, 15: False, 16: True}
EMODB_TEXTS = ("a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10")

CORPUS_PRESETS: dict[str, dict] = {
    # Unit tests: every code path, a few seconds to generate.
    "tiny": {
        # three speakers per corpus: one each for the train, validation and test splits
        "emodb_speakers": (3, 8, 9),
        "emodb_texts": ("a01", "b01"),
        "emodb_versions": ("a",),
        "emodb_boredom_texts": 1,
        "ravdess_actors": (1, 2, 3),
        "ravdess_statements": (1,),
        "ravdess_repetitions": (1,),
        "ravdess_excluded": ("calm", "surprise"),
    },
    "demo": {
        "emodb_speakers": (3, 8, 10, 13, 16),
        "emodb_texts": EMODB_TEXTS[:6],
        "emodb_versions": ("a",),
        "emodb_boredom_texts": 2,
        "ravdess_actors": (1, 2, 3, 4, 5, 6),
        "ravdess_statements": (1, 2),
        "ravdess_repetitions": (1, 2),
        "ravdess_excluded": ("calm", "surprise"),
    },
    # Throughput benchmarks: >= 2,000 clips.
    "large": {
        "emodb_speakers": tuple(EMODB_SPEAKERS),
        "emodb_texts": EMODB_TEXTS,
        "emodb_versions": ("a", "b"),
        "emodb_boredom_texts": 4,
        "ravdess_actors": tuple(range(1, 25)),
        "ravdess_statements": (1, 2),
        "ravdess_repetitions": (1, 2),
        "ravdess_excluded": ("calm", "surprise"),
    },
}

_DATASET_CODE = {"emodb": 1, "ravdess": 2}

# -------------------------------------------------------------------------- speakers


def make_speaker(dataset: str, speaker_id: int, female: bool, seed: int) -> Speaker:
    """Draw a voice from (seed, dataset, id), so a speaker sounds the same in every clip."""
    rng = np.random.default_rng([seed, _DATASET_CODE[dataset], speaker_id, 7])
    if female:
        base_f0, vtl = rng.uniform(175, 245), rng.uniform(1.08, 1.2)
    else:
        base_f0, vtl = rng.uniform(95, 140), rng.uniform(0.92, 1.04)
    return Speaker(
        dataset=dataset,
        speaker_id=speaker_id,
        female=female,
        base_f0=float(base_f0),
        vtl_scale=float(vtl),
        accent_st=float(rng.uniform(1.5, 3.5)),
        rate=float(rng.uniform(3.6, 5.0)),
        tilt_hz=float(np.exp(rng.normal(0.0, 0.25))),
        breathiness=float(rng.uniform(0.0, 0.08)),
        expressiveness=float(np.exp(rng.normal(0.0, 0.2))),
    )


# ---------------------------------------------------------------------- corpus writer


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one file, small enough to ship to a worker process."""

    index: int
    relpath: str
    dataset: str
    speaker: Speaker
    emotion: str
    intensity: float
    sample_rate: int
    text_key: tuple[int, ...]
    n_syllables: int
    lead_s: tuple[float, float]


def plan_corpus(preset: str = "demo", seed: int = 0) -> list[ClipSpec]:
    """The list of clips a preset produces, in a fixed order that indexes their rngs."""
    if preset not in CORPUS_PRESETS:
        raise ValueError(f"unknown corpus preset {preset!r}; known: {', '.join(CORPUS_PRESETS)}")
    cfg = CORPUS_PRESETS[preset]
    plan: list[tuple] = []
    for spk_id in cfg["emodb_speakers"]:
        spk = make_speaker("emodb", spk_id, EMODB_SPEAKERS[spk_id], seed)
        jobs = [(e, t, v) for e in EMOTIONS for t in cfg["emodb_texts"] for v in cfg["emodb_versions"]]
        jobs += [("boredom", t, "a") for t in cfg["emodb_texts"][: cfg["emodb_boredom_texts"]]]
        for emotion, text, version in jobs:
            # EmoDB texts differ in length (one short sentence to two clauses).
            text_no = EMODB_TEXTS.index(text) if text in EMODB_TEXTS else 0
            n_syl = 7 + (text_no * 5) % 13
            key = (seed, 1, ord(text[0]), int(text[1:]))
            name = emodb_name(spk_id, text, emotion, version)
            plan.append((f"emodb/wav/{name}", "emodb", spk, emotion, 1.0, EMODB_SR, key, n_syl, (0.05, 0.3)))
    for actor in cfg["ravdess_actors"]:
        spk = make_speaker("ravdess", actor, actor % 2 == 0, seed)
        emotions = list(EMOTIONS) + list(cfg["ravdess_excluded"])
        for emotion in emotions:
            # Real RAVDESS has no strong-intensity neutral.
            for intensity in (1,) if emotion == "neutral" else (1, 2):
                for statement in cfg["ravdess_statements"]:
                    for rep in cfg["ravdess_repetitions"]:
                        name = ravdess_name(actor, emotion, intensity, statement, rep)
                        key = (seed, 2, statement)
                        plan.append((f"ravdess/Actor_{actor:02d}/{name}", "ravdess", spk, emotion,
                                     INTENSITY_GAIN[intensity], RAVDESS_SR, key, 7, (0.4, 0.9)))
    return [ClipSpec(i, *row) for i, row in enumerate(plan)]


def render_clip(spec: ClipSpec, seed: int) -> np.ndarray:
    """A clip's audio depends only on (seed, its index): identical with any worker count."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, spec.index]))
    script = make_script(spec.text_key, spec.n_syllables)
    return synthesize_utterance(spec.speaker, spec.emotion, rng, script, spec.sample_rate, spec.intensity, spec.lead_s)


def _write(args: tuple[ClipSpec, int, str]) -> dict:
    spec, seed, out_dir = args
    wave = render_clip(spec, seed)
    path = Path(out_dir) / spec.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, spec.sample_rate, subtype="PCM_16", format="WAV")
    return {
        "path": str(path),
        "dataset": spec.dataset,
        "speaker": f"{spec.dataset}:{spec.speaker.speaker_id:02d}",
        "emotion": spec.emotion,
        "sample_rate": spec.sample_rate,
        "seconds": len(wave) / spec.sample_rate,
    }


def generate_corpus(out_dir: str | Path, preset: str = "demo", seed: int = 0, workers: int = 1) -> pd.DataFrame:
    """Write a preset's clips under out_dir and return one row per file written.

    Layout: out_dir/emodb/wav/<EmoDB name>.wav, out_dir/ravdess/Actor_XX/<RAVDESS name>.wav
    and out_dir/corpus.json. The same preset and seed give byte-identical files whatever
    ``workers`` is, because each clip's rng is derived from (seed, clip index) only.
    Excluded classes (boredom, calm, surprise) are written too; the loaders count them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(spec, seed, str(out_dir)) for spec in plan_corpus(preset, seed)]
    if workers > 1:
        # spawn: forking a process that may hold torch/Ray threads is not safe.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(_write, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    else:
        rows = [_write(job) for job in jobs]
    table = pd.DataFrame(rows, columns=["path", "dataset", "speaker", "emotion", "sample_rate", "seconds"])
    counts = {d: table.loc[table["dataset"] == d, "emotion"].value_counts().sort_index().to_dict() for d in sorted(table["dataset"].unique())}
    meta = {
        "preset": preset,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "files": len(table),
        "counts": {d: {e: int(c) for e, c in cs.items()} for d, cs in counts.items()},
        "seconds": round(float(table["seconds"].sum()), 2),
    }
    (out_dir / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n")
    return table
