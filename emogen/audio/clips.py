"""One clip from file to scaled log-mel, with numpy, soundfile and soxr only (no torch).

decode (soundfile) -> mono -> resample to 22,050 Hz (soxr) -> centre crop / zero pad to
4.0 s -> peak normalize -> log-mel (``LogMel``: numpy rfft + a precomputed mel filterbank)
scaled to [-1, 1].

This is everything a preprocessing worker runs, kept free of torch on purpose: importing
torch would cost a fresh worker more CPU time and memory than featurizing a corpus of
clips takes. ``emogen.audio.mel`` wraps ``LogMel`` for torch callers (``LogMelExtractor``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from emogen.config import AudioConfig


class RejectedClip(ValueError):
    """A source file that cannot become a training clip; the message is the reason."""


# --------------------------------------------------------------------------- decoding


def read_audio(path: str | Path, cfg: AudioConfig = AudioConfig()) -> tuple[np.ndarray, int]:
    """Decode the part of a file that standardization keeps.

    Returns (samples [frames, channels] float32, sample rate). Only the centre window of
    ``cfg.duration_s`` is read, so a 10-minute file costs the same memory as a 4-s one.
    Raises RejectedClip with a human-readable reason for anything unusable.
    """
    path = Path(path)
    # libsndfile reports a missing file as a bare "System error": name the cause first.
    if not path.exists():
        raise RejectedClip("file not found (missing, or a broken link)")
    if not os.access(path, os.R_OK):
        raise RejectedClip("file not readable (permission denied)")
    if path.stat().st_size == 0:
        raise RejectedClip("empty file (0 bytes)")
    # One open serves the header and the samples; it opens the file as sf.info does, so an
    # unreadable file raises the same errors.
    try:
        audio = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise RejectedClip(f"not a readable audio file: {exc}") from None
    except OSError as exc:
        raise RejectedClip(f"cannot open file: {exc.strerror or exc}") from None
    with audio:
        sample_rate, total = audio.samplerate, audio.frames
        if sample_rate <= 0:
            raise RejectedClip(f"invalid sample rate {sample_rate}")
        if total <= 0:
            raise RejectedClip("zero-length audio (no samples)")
        source_s = total / sample_rate
        if source_s > cfg.max_source_s:
            raise RejectedClip(f"too long: {source_s:.0f} s exceeds the {cfg.max_source_s:.0f} s limit")
        keep = int(np.ceil(cfg.duration_s * sample_rate))
        start = max(0, (total - keep) // 2)
        try:
            if start:
                audio.seek(start)
            data = audio.read(min(keep, total), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise RejectedClip(f"corrupt audio data: {exc}") from None
    if data.size == 0:
        raise RejectedClip("zero-length audio (no samples decoded)")
    if not np.isfinite(data).all():
        raise RejectedClip("audio contains NaN or infinite samples")
    return data, sample_rate


# ---------------------------------------------------------------------- standardizing


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[frames] or [frames, channels] -> [frames] by averaging channels."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def fit_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Centre-crop or symmetrically zero-pad a mono waveform to exactly num_samples."""
    n = wave.shape[-1]
    if n > num_samples:
        start = (n - num_samples) // 2
        return wave[start : start + num_samples]
    if n < num_samples:
        left = (num_samples - n) // 2
        return np.pad(wave, (left, num_samples - n - left))
    return wave


def peak_normalize(wave: np.ndarray, silence_peak: float) -> np.ndarray:
    """Scale to peak 1.0; a clip quieter than silence_peak is returned as zeros (no 0/0)."""
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak < silence_peak:
        return np.zeros_like(wave)
    return wave / peak


def standardize_clip(samples: np.ndarray, sample_rate: int, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """Any rate and channel layout -> mono, cfg.sample_rate, cfg.duration_s, peak 1.0."""
    wave = to_mono(samples)
    if sample_rate != cfg.sample_rate:
        # soxr HQ is librosa's default resampler, so features match the seed's loop, and it
        # needs no torch in the workers
        wave = soxr.resample(wave, sample_rate, cfg.sample_rate, quality="HQ").astype(np.float32)
    wave = fit_length(wave, cfg.num_samples)
    return peak_normalize(wave, cfg.silence_peak).astype(np.float32)


def is_silent(wave: np.ndarray, cfg: AudioConfig = AudioConfig()) -> bool:
    return not wave.size or float(np.max(np.abs(wave))) < cfg.silence_peak


def load_clip(path: str | Path, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """read_audio + standardize_clip, rejecting silence; returns [cfg.num_samples]."""
    data, sr = read_audio(path, cfg)
    if is_silent(data, cfg):
        raise RejectedClip(f"silent audio (peak below {cfg.silence_peak:g})")
    return standardize_clip(data, sr, cfg)


# ------------------------------------------------------------------------- features


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's and torchaudio's mel_scale="slaney"): linear below
    1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * (3.0 / 200.0)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3.0)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


def mel_filterbank(cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """Triangular Slaney-normalized mel filters [n_fft // 2 + 1, n_mels], float64.

    The construction of torchaudio.functional.melscale_fbanks(norm="slaney",
    mel_scale="slaney") and librosa.filters.mel (their defaults agree), computed once per
    extractor instead of inside every transform call.
    """
    freqs = np.linspace(0.0, cfg.sample_rate // 2, cfg.n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    widths = np.diff(edges)
    slopes = edges[None, :] - freqs[:, None]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2:] - edges[:-2]))  # Slaney: constant energy per band


def power_to_db(power: np.ndarray) -> np.ndarray:
    return (10.0 * np.log10(np.maximum(power, np.float32(1e-10)))).astype(np.float32, copy=False)


def db_to_scaled(db: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    span = cfg.db_ceil - cfg.db_floor
    scaled = (np.clip(db, cfg.db_floor, cfg.db_ceil) - cfg.db_floor) * (2.0 / span) - 1.0
    return scaled.astype(np.float32, copy=False)


class LogMel:
    """Waveform(s) [..., samples] at cfg.sample_rate -> mel power / scaled log-mel
    [..., n_mels, frames], float32 numpy.

    The transform of torchaudio's MelSpectrogram (periodic Hann window, centre reflect
    padding, power 2, Slaney mel scale and norm, like librosa's defaults) as one rfft over
    strided frames and one matmul with the filterbank, restricted to the FFT bins the
    filters touch: faster than torchaudio's transform per clip, and no torch in the workers.
    """

    def __init__(self, cfg: AudioConfig = AudioConfig()):
        self.cfg = cfg
        filters = mel_filterbank(cfg)
        used = np.flatnonzero(filters.any(axis=1))
        self.bins = slice(int(used[0]), int(used[-1]) + 1)
        self.filters = np.ascontiguousarray(filters[self.bins].T, dtype=np.float32)  # [n_mels, bins]
        n = np.arange(cfg.n_fft)
        self.window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.n_fft)).astype(np.float32)  # periodic Hann

    def power(self, wave: np.ndarray) -> np.ndarray:
        """Mel power spectrogram [..., n_mels, frames]."""
        wave = np.asarray(wave, dtype=np.float32)
        pad = self.cfg.n_fft // 2
        padded = np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(pad, pad)], mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.cfg.n_fft, axis=-1)[..., :: self.cfg.hop_length, :]
        spectrum = np.fft.rfft(frames * self.window, axis=-1)[..., self.bins]  # complex64
        power = spectrum.real**2 + spectrum.imag**2  # [..., frames, bins]
        return self.filters @ np.swapaxes(power, -1, -2)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """Scaled log-mel in [-1, 1]: dB clipped to [db_floor, db_ceil], mapped linearly."""
        return db_to_scaled(power_to_db(self.power(wave)), self.cfg)
