"""A synthetic, deterministic stand-in for EmoDB and RAVDESS.

The real corpora cannot be downloaded on our machines, yet every loader, the resampling
path and the speaker-independent split need realistic input. So we synthesize speech-like
clips whose emotion lives where it lives in real acted speech -- F0 level, range and
contour, speaking rate, pauses, loudness contrast, spectral tilt, breathiness and
jitter/shimmer -- and write them under the real file-name schemes and sample rates
(EmoDB: 16 kHz, RAVDESS: 48 kHz, both 16-bit PCM mono).

The voice is a source-filter model: a glottal impulse train from phase accumulation over
a time-varying F0 contour (with jitter, shimmer and pulsed aspiration noise), shaped by a
tilt filter, then one vowel per syllable through cascaded 2nd-order formant resonators
scaled by the speaker's vocal-tract length, plus fricative/plosive noise bursts and pauses.

Emotion effects are relative to each speaker (semitones above *their* pitch, multiples of
*their* rate), scaled by a per-speaker expressiveness and per-clip random variation, so
classes overlap the way they do in real data (happiness~anger~fear on arousal,
sadness~neutral~disgust at low arousal) and a classifier must generalize across voices.

Calibration (``benchmarks/corpus_calibration.py``: load_clip -> LogMelExtractor ->
per-band mean+std (256 dims) -> StandardScaler + LogisticRegression, GroupKFold over
speakers, 6 emotions), measured on 2 CPU cores:

    preset  files  six-emotion clips  speakers  seed  accuracy
    demo      550                444        11     0     0.615
    demo      550                444        11     1     0.644
    demo      550                444        11     2     0.671
    demo      550                444        11     3     0.631
    large    2680               2256        34     0     0.689

Per-class recall (demo, seed 0): anger 0.64, sadness 0.77, happiness 0.68, neutral 0.28,
fear 0.50, disgust 0.72 -- the confusions are the intended ones (anger/happiness/fear,
sadness/disgust), and neutral, between everything and with half as many RAVDESS takes,
is the hardest. The tiny preset (84 files, 3 speakers per corpus) is for tests only.

A deeper model (ResNet on the log-mel) is expected to do somewhat better.
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import soundfile as sf
from scipy.signal import lfilter

from emogen.config import EMOTIONS
from emogen.data.datasets import emodb_name, ravdess_name

# Bump whenever a change below alters the audio: corpus.json records it, so a cached
# corpus from an older generator is recognisably stale.
GENERATOR_VERSION = "1"

EMODB_SR = 16_000
RAVDESS_SR = 48_000
MIN_SECONDS = 1.5
MAX_SECONDS = 5.5
# Rate of the prosody (F0) control signal, Hz.
CONTROL_RATE = 1000

# ---------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Prosody:
    """How an emotion moves a voice away from that speaker's neutral delivery.

    Neutral is the identity, so every field reads as "relative to the speaker".
    """

    f0_shift: float = 0.0  # semitones above the speaker's base pitch
    f0_range: float = 1.0  # multiplier on the speaker's accent size (semitones)
    final_slope: float = -2.0  # semitones of drift over a phrase (declination < 0)
    rate: float = 1.0  # multiplier on the speaker's syllables per second
    pause: float = 1.0  # multiplier on pause length between phrases
    stress_db: float = 6.0  # loudness contrast between stressed and unstressed syllables
    tilt_hz: float = 900.0  # glottal low-pass corner: higher = brighter, more vocal effort
    breathiness: float = 0.08  # aspiration noise relative to the voiced source
    jitter: float = 0.008  # relative period-to-period F0 perturbation
    shimmer: float = 0.06  # relative period-to-period amplitude perturbation
    tremor: float = 0.0  # semitones of 5-7 Hz F0 wobble (fearful voice)
    f1_scale: float = 1.0  # wider jaw opening in high-effort speech raises F1
    f2_scale: float = 1.0  # lip spreading (smiling) raises F2
    level: float = 0.55  # peak level of the written file


EMOTION_PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(),
    "anger": Prosody(f0_shift=4.5, f0_range=1.5, final_slope=-4.0, rate=1.12, pause=0.7, stress_db=11.0,
                     tilt_hz=2200.0, breathiness=0.04, jitter=0.012, shimmer=0.08, f1_scale=1.08, level=0.85),
    "happiness": Prosody(f0_shift=5.0, f0_range=1.9, final_slope=1.0, rate=1.08, pause=0.8, stress_db=8.0,
                         tilt_hz=1600.0, breathiness=0.07, jitter=0.008, shimmer=0.05, f2_scale=1.07, level=0.75),
    "fear": Prosody(f0_shift=6.0, f0_range=0.9, final_slope=1.5, rate=1.2, pause=1.2, stress_db=5.0,
                    tilt_hz=1200.0, breathiness=0.2, jitter=0.02, shimmer=0.1, tremor=0.6, level=0.6),
    "sadness": Prosody(f0_shift=-1.5, f0_range=0.5, final_slope=-3.0, rate=0.74, pause=1.6, stress_db=3.5,
                       tilt_hz=500.0, breathiness=0.22, jitter=0.01, shimmer=0.07, f1_scale=0.95, level=0.35),
    # Disgust: clipped, creaky and falling, but with normal effort -- unlike sadness, not breathy.
    "disgust": Prosody(f0_shift=-1.0, f0_range=1.3, final_slope=-6.0, rate=0.88, pause=1.2, stress_db=8.0,
                       tilt_hz=950.0, breathiness=0.05, jitter=0.03, shimmer=0.14, f2_scale=0.95, level=0.5),
    # Classes the loaders exclude: present so the corpus exercises that path too.
    "boredom": Prosody(f0_shift=-2.0, f0_range=0.4, final_slope=-2.0, rate=0.82, pause=1.3, stress_db=3.0,
                       tilt_hz=650.0, breathiness=0.1, level=0.4),
    "calm": Prosody(f0_shift=-0.5, f0_range=0.8, rate=0.92, pause=1.1, stress_db=4.5, tilt_hz=750.0,
                    breathiness=0.12, level=0.45),
    "surprise": Prosody(f0_shift=6.0, f0_range=2.0, final_slope=4.0, rate=1.05, stress_db=9.0, tilt_hz=1500.0,
                        breathiness=0.08, level=0.75),
}

# (F1, F2, F3) in Hz for an adult male vocal tract: a, e, i, o, u, schwa.
VOWEL_FORMANTS = np.array(
    [[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240], [500, 1500, 2500]],
    dtype=np.float64,
)
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0])
F4_HZ = 3400.0

# Per-clip randomness that is independent of the emotion. These widths are the main
# calibration knob: they set how much the classes overlap.
CLIP_VARIATION = {
    "f0_shift_st": 1.3,  # sd, semitones
    "range_log": 0.25,  # sd of log multiplier
    "rate_log": 0.1,
    "tilt_log": 0.25,
    "breath_log": 0.4,
    "perturb_log": 0.35,  # jitter and shimmer
    "stress_db": 2.0,
    "expressiveness_log": 0.2,
}

# How strongly RAVDESS intensity codes push the delivery away from neutral.
INTENSITY_GAIN = {1: 0.75, 2: 1.25}


@dataclass(frozen=True)
class Speaker:
    """A voice: pitch, vocal tract and habits that every emotion is expressed relative to."""

    dataset: str
    speaker_id: int
    female: bool
    base_f0: float  # Hz
    vtl_scale: float  # formant multiplier: shorter tract -> higher formants
    accent_st: float  # typical pitch-accent size, semitones
    rate: float  # syllables per second when neutral
    tilt_hz: float  # multiplier on the emotion's tilt corner: some voices are brighter
    breathiness: float
    expressiveness: float  # how far this actor moves from neutral


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

# ----------------------------------------------------------------- speakers and texts


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


@dataclass(frozen=True)
class Script:
    """What is said, independent of how: vowels, syllable onsets and phrase breaks.

    The same text keeps the same script across emotions, so content never predicts the label.
    """

    vowels: tuple[int, ...]
    onsets: tuple[str, ...]  # "" vowel onset, "f" fricative, "p" plosive
    breaks: tuple[int, ...]  # syllable indices that start a new phrase


def make_script(text_key: Sequence[int], n_syllables: int) -> Script:
    """A script drawn from the text's key alone, so every speaker and emotion says the same thing."""
    rng = np.random.default_rng(list(text_key))
    vowels = tuple(int(v) for v in rng.integers(0, len(VOWEL_FORMANTS), n_syllables))
    onsets = tuple(str(o) for o in rng.choice(["", "f", "p"], n_syllables, p=[0.35, 0.35, 0.3]))
    n_phrases = 1 + n_syllables // 8
    breaks = tuple(sorted(int(b) for b in rng.choice(np.arange(3, n_syllables - 2), n_phrases - 1, replace=False))) if n_phrases > 1 and n_syllables > 6 else ()
    return Script(vowels, onsets, breaks)


# ------------------------------------------------------------------ synthesis helpers


def _blend(neutral: Prosody, target: Prosody, k: float) -> Prosody:
    """Move k of the way from neutral to target (k > 1 exaggerates); ratios blend in log."""
    lin = lambda a, b: a + k * (b - a)  # noqa: E731
    log = lambda a, b: float(np.exp(np.log(a) + k * (np.log(b) - np.log(a))))  # noqa: E731
    return Prosody(
        f0_shift=lin(neutral.f0_shift, target.f0_shift),
        f0_range=log(neutral.f0_range, target.f0_range),
        final_slope=lin(neutral.final_slope, target.final_slope),
        rate=log(neutral.rate, target.rate),
        pause=log(neutral.pause, target.pause),
        stress_db=lin(neutral.stress_db, target.stress_db),
        tilt_hz=log(neutral.tilt_hz, target.tilt_hz),
        breathiness=log(neutral.breathiness, target.breathiness),
        jitter=log(neutral.jitter, target.jitter),
        shimmer=log(neutral.shimmer, target.shimmer),
        tremor=lin(neutral.tremor, target.tremor),
        f1_scale=log(neutral.f1_scale, target.f1_scale),
        f2_scale=log(neutral.f2_scale, target.f2_scale),
        level=target.level,
    )


def clip_prosody(speaker: Speaker, emotion: str, rng: np.random.Generator, intensity: float = 1.0) -> Prosody:
    """The emotion as this speaker delivers it in this take: blended, then jittered per clip."""
    v = CLIP_VARIATION
    k = intensity * speaker.expressiveness * float(np.exp(rng.normal(0.0, v["expressiveness_log"])))
    p = _blend(EMOTION_PROSODY["neutral"], EMOTION_PROSODY[emotion], k)
    lognorm = lambda sd: float(np.exp(rng.normal(0.0, sd)))  # noqa: E731
    perturb = lognorm(v["perturb_log"])
    return replace(
        p,
        f0_shift=p.f0_shift + rng.normal(0.0, v["f0_shift_st"]),
        f0_range=p.f0_range * lognorm(v["range_log"]),
        rate=p.rate * lognorm(v["rate_log"]),
        tilt_hz=p.tilt_hz * speaker.tilt_hz * lognorm(v["tilt_log"]),
        breathiness=(p.breathiness + speaker.breathiness) * lognorm(v["breath_log"]),
        jitter=p.jitter * perturb,
        shimmer=p.shimmer * perturb * lognorm(0.2),
        stress_db=max(1.0, p.stress_db + rng.normal(0.0, v["stress_db"])),
        level=float(np.clip(p.level * lognorm(0.12), 0.3, 0.9)),
    )


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average by cumulative sum: O(n) whatever the width."""
    if width <= 1:
        return x
    c = np.cumsum(np.concatenate([np.zeros(width), x, np.full(width, x[-1])]))
    out = (c[width:] - c[:-width]) / width
    return out[width // 2 : width // 2 + len(x)]


def _one_pole(x: np.ndarray, corner_hz: float, sr: int) -> np.ndarray:
    a = float(np.exp(-2.0 * np.pi * corner_hz / sr))
    return lfilter([1.0 - a], [1.0, -a], x)


def _resonators(freqs: Sequence[float], bandwidths: Sequence[float], sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Cascade of 2nd-order resonators with unit DC gain, merged into one IIR (b, a)."""
    a_total, gain = np.array([1.0]), 1.0
    for f, bw in zip(freqs, bandwidths):
        f = min(f, 0.45 * sr)
        r = np.exp(-np.pi * bw / sr)
        a = np.array([1.0, -2.0 * r * np.cos(2.0 * np.pi * f / sr), r * r])
        a_total = np.convolve(a_total, a)
        gain *= a.sum()
    return np.array([gain]), a_total


def glottal_source(f0: np.ndarray, p: Prosody, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Pulse train over the F0 contour, with jitter, shimmer, tilt and aspiration noise.

    Phase accumulation keeps the pitch continuous however fast F0 moves; pulses land at
    fractional sample positions (split over two samples) so high voices at 16 kHz do not
    get extra jitter from rounding.
    """
    n = len(f0)
    # Jitter is one random factor per glottal period, held piecewise-constant in time.
    period_grid = max(1, int(sr / f0.mean()))
    jitter = 1.0 + p.jitter * rng.standard_normal(n // period_grid + 2)
    f0 = f0 * np.repeat(jitter, period_grid)[:n]
    phase = np.cumsum(f0 / sr)
    cycle = np.floor(phase).astype(np.int64)
    starts = np.flatnonzero(np.diff(cycle)) + 1
    frac = (phase[starts] - cycle[starts]) / np.maximum(phase[starts] - phase[starts - 1], 1e-9)
    amp = 1.0 + p.shimmer * rng.standard_normal(len(starts))
    pulses = np.zeros(n + 1)
    np.add.at(pulses, starts - 1, amp * frac)
    np.add.at(pulses, starts, amp * (1.0 - frac))
    # Glottal flow falls off above ~F0; the tilt corner adds a second slope whose position
    # is vocal effort; the difference is lip radiation.
    flow = _one_pole(_one_pole(pulses[:n], 120.0, sr), p.tilt_hz, sr)
    voiced = np.diff(flow, prepend=0.0)
    voiced /= np.abs(voiced).max() + 1e-12
    # Aspiration is turbulence through the opening glottis: noise pulsed at the F0 rate.
    pulsing = 0.6 + 0.4 * np.cos(2.0 * np.pi * phase)
    noise = np.diff(rng.standard_normal(n), prepend=0.0) * pulsing
    return voiced + p.breathiness * 2.0 * noise


# ------------------------------------------------------------------------- utterance


def synthesize_utterance(
    speaker: Speaker,
    emotion: str,
    rng: np.random.Generator,
    script: Script,
    sample_rate: int = EMODB_SR,
    intensity: float = 1.0,
    lead_s: tuple[float, float] = (0.05, 0.3),
) -> np.ndarray:
    """One spoken phrase as float32 mono at sample_rate, peak below full scale.

    rng supplies all per-take randomness, so the same speaker, script and rng state give
    the same waveform. lead_s bounds the leading and trailing silence, which differs
    between corpora (RAVDESS takes have long silences around the speech).
    """
    sr = sample_rate
    p = clip_prosody(speaker, emotion, rng, intensity)
    n_syl = len(script.vowels)

    # Timing: syllable lengths vary around the rate; phrase breaks add pauses.
    syl_s = rng.lognormal(0.0, 0.25, n_syl) / (speaker.rate * p.rate)
    gaps = np.zeros(n_syl)
    for b in script.breaks:
        gaps[b] = 0.18 * p.pause * rng.lognormal(0.0, 0.3)
    lead, tail = rng.uniform(*lead_s, 2)
    starts_s = np.cumsum(gaps + np.concatenate([[0.0], syl_s[:-1]]))
    ends_s = starts_s + syl_s
    # Keep the clip in [MIN_SECONDS, MAX_SECONDS]: drop trailing syllables of a long take,
    # pad a short one with silence.
    keep = lead + ends_s + tail <= MAX_SECONDS
    keep[:2] = True
    starts_s, ends_s = starts_s[keep], ends_s[keep]
    # Only the speech span is synthesized; the silences around it are padded on at the end,
    # which matters for RAVDESS, whose 48 kHz takes are a third silence.
    n = int(np.ceil(ends_s[-1] * sr)) + 1

    # F0 contour in semitones re the speaker's base: an emotion-dependent register,
    # accents on stressed syllables, drift over each phrase, slow wander and tremor.
    # Computed at a 1 kHz control rate (nothing in it moves faster) and interpolated.
    t = np.arange(int(ends_s[-1] * CONTROL_RATE) + 2) / CONTROL_RATE
    stress = rng.random(len(starts_s)) < 0.4
    stress[0] = True
    accents = np.where(stress, 1.0, 0.25) * speaker.accent_st * p.f0_range * rng.uniform(0.5, 1.3, len(starts_s))
    st = np.interp(t, 0.5 * (starts_s + ends_s), accents)
    phrase_starts = np.array([starts_s[0], *(starts_s[b] for b in script.breaks if b < len(starts_s))])
    phrase_start = phrase_starts[np.maximum(0, np.searchsorted(phrase_starts, t, side="right") - 1)]
    # final_slope is spread over about 1.5 s of phrase, so short phrases drift less.
    st = st + p.final_slope * np.clip((t - phrase_start) / 1.5, 0.0, 1.0)
    wander = _smooth(np.repeat(rng.standard_normal(len(t) // 50 + 2), 50)[: len(t)], 100)
    st = st + 0.5 * p.f0_range * wander
    st = st + p.tremor * np.sin(2.0 * np.pi * rng.uniform(5.0, 7.0) * t + rng.uniform(0, 2 * np.pi))
    st = _smooth(st, 40) + p.f0_shift
    f0 = np.clip(speaker.base_f0 * 2.0 ** (np.interp(np.arange(n) / sr, t, st) / 12.0), 60.0, 600.0)

    source = glottal_source(f0, p, sr, rng)
    out = np.zeros(n)
    for i, (s0, s1) in enumerate(zip(starts_s, ends_s)):
        a, b = int(s0 * sr), min(n, int(s1 * sr))
        onset = script.onsets[i]
        cons = int(rng.uniform(0.04, 0.09) * sr) if onset == "f" else int(rng.uniform(0.01, 0.025) * sr) if onset == "p" else 0
        cons = min(cons, (b - a) // 2)
        v0 = a + cons
        gain = 10.0 ** ((p.stress_db if stress[i] else 0.0) / 20.0)
        # Vowel nucleus: formants scaled by vocal tract, and by effort / lip spreading.
        f1, f2, f3 = VOWEL_FORMANTS[script.vowels[i]] * speaker.vtl_scale * rng.uniform(0.95, 1.05, 3)
        vocal_tract = _resonators([f1 * p.f1_scale, f2 * p.f2_scale, f3, F4_HZ * speaker.vtl_scale], FORMANT_BANDWIDTHS, sr)
        seg = lfilter(*vocal_tract, source[v0:b])
        length = b - v0
        attack = np.minimum(1.0, np.arange(length) / max(1, int(0.03 * sr)))
        env = attack * np.sin(np.pi * np.minimum(1.0, (np.arange(length) + 0.5) / length)) ** 0.5
        out[v0:b] += gain * env * seg
        if cons:
            # Frication: noise through one broad high resonance; plosives are shorter and louder.
            burst = lfilter(*_resonators([rng.uniform(2500, 6000) * speaker.vtl_scale], [1500.0], sr), rng.standard_normal(cons))
            level = (0.15 if onset == "f" else 0.35) * gain * np.abs(seg).max(initial=1e-6)
            out[a:v0] += level * np.hanning(cons) * burst / (np.abs(burst).max() + 1e-12)

    lead_n = int(lead * sr)
    total = max(lead_n + n, int(round(min(max(lead + ends_s[-1] + tail, MIN_SECONDS), MAX_SECONDS) * sr)))
    out = np.pad(out / (np.abs(out).max() + 1e-12), (lead_n, total - lead_n - n))
    out += 1e-4 * rng.standard_normal(total)  # room noise: pauses are not digital zero
    return (p.level * out / np.abs(out).max()).astype(np.float32)


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
