"""One clip from file to scaled log-mel, with numpy, soundfile and soxr only (no torch).

decode (soundfile; a local path, or a storage URI read through emogen.storage) -> mono
-> resample to 22,050 Hz (soxr) -> centre crop / zero pad to 4.0 s -> peak normalize ->
log-mel (``LogMel``: numpy rfft + a precomputed mel filterbank) scaled to [-1, 1].

This is everything a preprocessing worker runs, kept free of torch on purpose: importing
torch would cost a fresh worker more CPU time and memory than featurizing a corpus of
clips takes. ``emogen.audio.mel`` wraps ``LogMel`` for torch callers (``LogMelExtractor``).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
import soxr

from emogen import storage
from emogen.config import AudioConfig


@dataclass(frozen=True)
class SourceInfo:
    """What a source file's header says: the manifest's source_sr, channels and source_s."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / max(self.sample_rate, 1)


UNKNOWN_SOURCE = (math.nan, math.nan, math.nan)  # (sample rate, channels, seconds) of a file with no readable header


def source_columns(info: SourceInfo | None) -> tuple[float, float, float]:
    """(source_sr, channels, source_s) as the manifest holds them; NaNs when unknown."""
    if info is None:
        return UNKNOWN_SOURCE
    return float(info.sample_rate), float(info.channels), info.seconds


class RejectedClip(ValueError):
    """A source file that cannot become a training clip; the message is the reason.
    ``source`` is its header when the header could be read (a too-long or silent file)."""

    def __init__(self, reason: str, source: SourceInfo | None = None):
        super().__init__(reason)
        self.source = source


# --------------------------------------------------------------------------- decoding


class RangedReader:
    """A remote object as soundfile reads it (seek, tell, read, readinto) over ranged reads.

    libsndfile reads a header in many small pieces and then the samples in one run; each
    read of a remote file is a request, so reads are served from a read-ahead window of
    at least ``window`` bytes: a clip costs one or two requests, and a long file's centre
    is read without the rest. A failed read is kept in ``error`` (libsndfile sees a short
    read, which its callbacks cannot raise through) so the reject can name the cause.
    """

    def __init__(self, handle: Any, size: int, name: str = "", window: int = 1 << 20):
        self._handle, self._size, self._window = handle, size, window
        self.name = name
        self._position = 0
        self._buffer, self._buffer_start = b"", 0
        self.error: OSError | None = None

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, count: int = -1) -> bytes:
        end = self._size if count is None or count < 0 else min(self._size, self._position + count)
        if end <= self._position:
            return b""
        buffered_end = self._buffer_start + len(self._buffer)
        if not (self._buffer_start <= self._position and end <= buffered_end):
            length = min(self._size - self._position, max(end - self._position, self._window))
            try:
                self._buffer = self._handle.read_at(length, self._position)
            except OSError as exc:
                self.error = exc
                return b""
            self._buffer_start = self._position
            end = min(end, self._buffer_start + len(self._buffer))
        data = self._buffer[self._position - self._buffer_start : end - self._buffer_start]
        self._position += len(data)
        return data

    def readinto(self, target: Any) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._handle.close()

    def __repr__(self) -> str:  # what soundfile's messages quote: the location, as for a local file
        return repr(self.name)


def _open_remote(location: str) -> RangedReader:
    """A remote object opened for soundfile, or RejectedClip with the reasons a local file
    gets for the same problems."""
    try:
        handle = storage.open_input(location)
    except storage.StorageNotFound:
        raise RejectedClip("file not found (no object at this location)") from None
    except storage.StorageError as exc:
        raise RejectedClip(f"file not readable ({exc})") from None
    size = handle.size()
    if size == 0:
        handle.close()
        raise RejectedClip("empty file (0 bytes)")
    return RangedReader(handle, size, location)


@contextmanager
def _sound_file(location: str | Path) -> Iterator[sf.SoundFile]:
    """One open serving the header and the samples, local or remote; RejectedClip with a
    human-readable reason for a file that is missing, unreadable, empty or not audio."""
    source: str | RangedReader
    reader: RangedReader | None = None
    if storage.is_uri(location):
        source = reader = _open_remote(str(location))
    else:
        path = storage.local_path(location)
        # libsndfile reports a missing file as a bare "System error": name the cause first.
        if not path.exists():
            raise RejectedClip("file not found (missing, or a broken link)")
        if not os.access(path, os.R_OK):
            raise RejectedClip("file not readable (permission denied)")
        if path.stat().st_size == 0:
            raise RejectedClip("empty file (0 bytes)")
        source = str(path)
    try:
        try:
            audio = sf.SoundFile(source)
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            if reader is not None and reader.error is not None:
                raise RejectedClip(f"cannot read file: {reader.error}") from None
            raise RejectedClip(f"not a readable audio file: {exc}") from None
        except OSError as exc:
            raise RejectedClip(f"cannot open file: {exc.strerror or exc}") from None
        with audio:
            yield audio
    finally:
        if reader is not None:
            reader.close()


def read_source_info(location: str | Path) -> SourceInfo:
    """A file's header (sample rate, channels, frames); RejectedClip if it has none."""
    with _sound_file(location) as audio:
        return SourceInfo(audio.samplerate, audio.channels, audio.frames)


def read_audio_and_info(location: str | Path, cfg: AudioConfig = AudioConfig()) -> tuple[np.ndarray, int, SourceInfo]:
    """read_audio, and the header of the file it read."""
    with _sound_file(location) as audio:
        info = SourceInfo(audio.samplerate, audio.channels, audio.frames)
        sample_rate, total = audio.samplerate, audio.frames
        if sample_rate <= 0:
            raise RejectedClip(f"invalid sample rate {sample_rate}", info)
        if total <= 0:
            raise RejectedClip("zero-length audio (no samples)", info)
        if info.seconds > cfg.max_source_s:
            raise RejectedClip(f"too long: {info.seconds:.0f} s exceeds the {cfg.max_source_s:.0f} s limit", info)
        keep = int(np.ceil(cfg.duration_s * sample_rate))
        start = max(0, (total - keep) // 2)
        try:
            if start:
                audio.seek(start)
            data = audio.read(min(keep, total), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise RejectedClip(f"corrupt audio data: {exc}", info) from None
    if data.size == 0:
        raise RejectedClip("zero-length audio (no samples decoded)", info)
    if not np.isfinite(data).all():
        raise RejectedClip("audio contains NaN or infinite samples", info)
    return data, sample_rate, info


def read_audio(location: str | Path, cfg: AudioConfig = AudioConfig()) -> tuple[np.ndarray, int]:
    """Decode the part of a file (a local path or a storage URI) that standardization keeps.

    Returns (samples [frames, channels] float32, sample rate). Only the centre window of
    ``cfg.duration_s`` is read, so a 10-minute file costs the same memory as a 4-s one.
    Raises RejectedClip with a human-readable reason for anything unusable.
    """
    data, sample_rate, _ = read_audio_and_info(location, cfg)
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


def load_clip_and_info(location: str | Path, cfg: AudioConfig = AudioConfig()) -> tuple[np.ndarray, SourceInfo]:
    """load_clip, and the header of the file it read."""
    data, sr, info = read_audio_and_info(location, cfg)
    if is_silent(data, cfg):
        raise RejectedClip(f"silent audio (peak below {cfg.silence_peak:g})", info)
    return standardize_clip(data, sr, cfg), info


def load_clip(location: str | Path, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """read_audio + standardize_clip, rejecting silence; returns [cfg.num_samples]."""
    return load_clip_and_info(location, cfg)[0]


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
