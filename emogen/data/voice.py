"""The voice of the synthetic corpus: a source-filter model that speaks one utterance
with an emotion, relative to one speaker's voice.

A glottal impulse train from phase accumulation over a time-varying F0 contour (with
jitter, shimmer and pulsed aspiration noise) is shaped by a tilt filter, then one vowel
per syllable passes through cascaded 2nd-order formant resonators scaled by the
speaker's vocal-tract length, with fricative/plosive noise bursts and pauses. Emotion
effects are relative to each speaker (semitones above *their* pitch, multiples of
*their* rate), scaled by a per-speaker expressiveness and per-clip random variation, so
classes overlap the way they do in real acted speech and a classifier must generalize
across voices. Every random draw comes from the rng a caller passes, in a fixed order,
so the same rng state gives the same samples (a change that alters them bumps
`emogen.data.corpus.GENERATOR_VERSION`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
from scipy.signal import lfilter

MIN_SECONDS = 1.5
MAX_SECONDS = 5.5
# Rate of the prosody (F0) control signal, Hz: nothing in the contour moves faster.
CONTROL_RATE = 1000
DEFAULT_SAMPLE_RATE = 16_000  # EmoDB's

# ------------------------------------------------------------------ prosody and voices


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


# Prosody fields that are offsets (semitones, dB) blend linearly; the others are ratios or
# magnitudes and blend in log; the level is the target's own.
_OFFSETS = ("f0_shift", "final_slope", "stress_db", "tremor")


def _blend(neutral: Prosody, target: Prosody, k: float) -> Prosody:
    """Move k of the way from neutral to target (k > 1 exaggerates); ratios blend in log."""
    values = {}
    for name in (f.name for f in fields(Prosody) if f.name != "level"):
        a, b = getattr(neutral, name), getattr(target, name)
        values[name] = a + k * (b - a) if name in _OFFSETS else float(np.exp(np.log(a) + k * (np.log(b) - np.log(a))))
    return Prosody(**values, level=target.level)


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
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    intensity: float = 1.0,
    lead_s: tuple[float, float] = (0.05, 0.3),
) -> np.ndarray:
    """One spoken phrase as float32 mono at sample_rate, peak below full scale.

    rng supplies all per-take randomness, so the same speaker, script and rng state give
    the same waveform. lead_s bounds the leading and trailing silence, which differs
    between corpora (RAVDESS takes have long silences around the speech).
    """
    p = clip_prosody(speaker, emotion, rng, intensity)
    timing = _syllable_timing(speaker, p, script, rng, lead_s)
    # Only the speech span is synthesized; the silences around it are padded on at the end,
    # which matters for RAVDESS, whose takes have long silences around the speech.
    n = int(np.ceil(timing.ends_s[-1] * sample_rate)) + 1
    f0, stress = _pitch_contour(speaker, p, script, timing, n, sample_rate, rng)
    source = glottal_source(f0, p, sample_rate, rng)
    speech = _articulate(source, speaker, p, script, timing, stress, sample_rate, rng)
    return _place_in_silence(speech, p, timing, sample_rate, rng)


@dataclass(frozen=True)
class _Timing:
    """When each kept syllable starts and ends (s, from the start of speech), and the
    silences before and after the speech."""

    starts_s: np.ndarray
    ends_s: np.ndarray
    lead: float
    tail: float


def _syllable_timing(speaker: Speaker, p: Prosody, script: Script, rng: np.random.Generator,
                     lead_s: tuple[float, float]) -> _Timing:
    """Syllable lengths vary around the rate; phrase breaks add pauses."""
    n_syl = len(script.vowels)
    syl_s = rng.lognormal(0.0, 0.25, n_syl) / (speaker.rate * p.rate)
    gaps = np.zeros(n_syl)
    for b in script.breaks:
        gaps[b] = 0.18 * p.pause * rng.lognormal(0.0, 0.3)
    lead, tail = rng.uniform(*lead_s, 2)
    starts_s = np.cumsum(gaps + np.concatenate([[0.0], syl_s[:-1]]))
    ends_s = starts_s + syl_s
    # Keep the clip in [MIN_SECONDS, MAX_SECONDS]: drop trailing syllables of a long take
    # (a short one is padded with silence by _place_in_silence).
    keep = lead + ends_s + tail <= MAX_SECONDS
    keep[:2] = True
    return _Timing(starts_s[keep], ends_s[keep], lead, tail)


def _pitch_contour(speaker: Speaker, p: Prosody, script: Script, timing: _Timing, n: int, sr: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(F0 in Hz per sample [n], which syllables are stressed). The contour, in semitones
    re the speaker's base: an emotion-dependent register, accents on stressed syllables,
    drift over each phrase, slow wander and tremor; computed at CONTROL_RATE and
    interpolated."""
    starts_s, ends_s = timing.starts_s, timing.ends_s
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
    return f0, stress


def _articulate(source: np.ndarray, speaker: Speaker, p: Prosody, script: Script, timing: _Timing,
                stress: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The source through one vowel per syllable, each led by its consonant's noise burst."""
    n = len(source)
    out = np.zeros(n)
    for i, (s0, s1) in enumerate(zip(timing.starts_s, timing.ends_s)):
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
    return out


def _place_in_silence(speech: np.ndarray, p: Prosody, timing: _Timing, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The speech between its leading and trailing silence, the clip kept within
    [MIN_SECONDS, MAX_SECONDS], with faint room noise, at the take's level."""
    n = len(speech)
    lead_n = int(timing.lead * sr)
    seconds = min(max(timing.lead + timing.ends_s[-1] + timing.tail, MIN_SECONDS), MAX_SECONDS)
    total = max(lead_n + n, int(round(seconds * sr)))
    out = np.pad(speech / (np.abs(speech).max() + 1e-12), (lead_n, total - lead_n - n))
    out += 1e-4 * rng.standard_normal(total)  # room noise: pauses are not digital zero
    return (p.level * out / np.abs(out).max()).astype(np.float32)
