"""Audio standardization and log-mel features.

decode (soundfile) -> mono -> resample to 22,050 Hz (soxr) -> centre crop / zero pad to
4.0 s -> peak normalize -> log-mel scaled to [-1, 1] (all in emogen.audio.clips, numpy only;
``LogMelExtractor`` is its torch face); and back again: scaled log-mel -> audio by
Griffin-Lim.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from emogen.audio.clips import LogMel
from emogen.config import AudioConfig

# ------------------------------------------------------------------------- features


class LogMelExtractor:
    """Waveform(s) at cfg.sample_rate -> log-mel in dB, scaled linearly to [-1, 1], as torch
    tensors: the torch face of ``emogen.audio.clips.LogMel``, so training, generation and the
    preprocessing workers compute one and the same feature.

    Slaney mel scale and filter norm, like librosa's defaults, so features agree with
    the seed's librosa pipeline.
    """

    def __init__(self, cfg: AudioConfig = AudioConfig()):
        self.cfg = cfg
        self.log_mel = LogMel(cfg)

    @staticmethod
    def _samples(wave: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(wave, torch.Tensor):
            wave = wave.detach().cpu().numpy()
        return np.asarray(wave, dtype=np.float32)

    def power(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram [..., n_mels, frames]."""
        return torch.from_numpy(self.log_mel.power(self._samples(wave)))

    def __call__(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.log_mel(self._samples(wave)))


def power_to_db(power: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(torch.clamp(power, min=1e-10))


def db_to_scaled(db: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    span = cfg.db_ceil - cfg.db_floor
    return (torch.clamp(db, cfg.db_floor, cfg.db_ceil) - cfg.db_floor) * (2.0 / span) - 1.0


def scaled_to_db(scaled: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    span = cfg.db_ceil - cfg.db_floor
    return (torch.clamp(scaled, -1.0, 1.0) + 1.0) * (span / 2.0) + cfg.db_floor


class MelInverter:
    """Scaled log-mel [..., n_mels, frames] -> waveform [..., samples]: the mel filterbank's
    pseudo-inverse, then fast Griffin-Lim (momentum 0.99) from zero phase.

    Deterministic: the same mel always gives the same audio, and a clip gives the same
    samples alone or inside a batch, because every clip runs through the same tensor
    shapes (``clips_per_pass`` clips at a time; a clip's numbers never depend on its
    batch mates). Leading dimensions are batch dimensions, as for torchaudio's GriffinLim.

    The algorithm is torchaudio's ``GriffinLim`` (tests/audio/test_audio.py compares them),
    with the STFT pair written for a fixed clip shape: torchaudio's ``istft`` spends most of
    a call in a generic overlap-add (``fold``) and in the window envelope it recomputes every
    call; here the envelope is computed once and the overlap-add is ``n_fft / hop`` shifted
    adds, which makes a Griffin-Lim iteration much cheaper (benchmarks/README.md, Serving).
    """

    def __init__(self, cfg: AudioConfig = AudioConfig(), n_iter: int | None = None, momentum: float = 0.99,
                 clips_per_pass: int = 1):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.cfg = cfg
        self.n_iter = int(n_iter or cfg.griffin_lim_iters)
        self.momentum = momentum / (1.0 + momentum)  # fast Griffin-Lim's extrapolation weight (as torchaudio)
        # Clips per vectorized Griffin-Lim run. 1 on a CPU: a clip's spectra are about a
        # megabyte, so runs of several clips fall out of cache and cost more per clip.
        self.clips_per_pass = max(1, int(clips_per_pass))
        n_freqs = cfg.n_fft // 2 + 1
        filterbank = torchaudio.functional.melscale_fbanks(
            n_freqs=n_freqs, f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate, norm="slaney", mel_scale="slaney",
        )  # [n_freqs, n_mels]: mel power = filterbank.T @ linear power
        # The minimum-norm least-squares inverse, which InverseMelScale solves on every call:
        # computed once, in float64 for a well-conditioned pseudo-inverse.
        # Stored transposed, [n_mels, n_freqs], so `mel frames @ it` gives frames-major spectra.
        self.mel_pinv_t = torch.linalg.pinv(filterbank.T.double()).T.float().contiguous()
        self.window = torch.hann_window(cfg.n_fft)
        self._envelopes: dict[int, tuple[int, torch.Tensor]] = {}

    # ---------------------------------------------------------------- the pieces

    @torch.no_grad()
    def magnitude(self, scaled: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Scaled log-mel [..., n_mels, frames] -> linear STFT magnitude [..., n_freqs, frames]."""
        return self._magnitude_frames(torch.as_tensor(scaled, dtype=torch.float32)).transpose(-1, -2)

    @torch.no_grad()
    def griffin_lim(self, magnitude: torch.Tensor) -> torch.Tensor:
        """STFT magnitude [..., n_freqs, frames] -> waveform [..., samples], not normalized."""
        magnitude = torch.as_tensor(magnitude, dtype=torch.float32)
        lead, (n_freqs, frames) = magnitude.shape[:-2], magnitude.shape[-2:]
        flat = magnitude.reshape(-1, n_freqs, frames).transpose(-1, -2).contiguous()
        waves = [self._griffin_lim_frames(flat[i:i + self.clips_per_pass])
                 for i in range(0, flat.shape[0], self.clips_per_pass)]
        return torch.cat(waves).reshape(*lead, -1)

    @torch.no_grad()
    def __call__(self, scaled: np.ndarray | torch.Tensor) -> np.ndarray:
        """Scaled log-mel [..., n_mels, frames] -> float32 waveform [..., samples], peak 0.95."""
        scaled = torch.as_tensor(scaled, dtype=torch.float32)
        lead, (n_mels, frames) = scaled.shape[:-2], scaled.shape[-2:]
        flat = scaled.reshape(-1, n_mels, frames)
        waves = []
        for i in range(0, flat.shape[0], self.clips_per_pass):  # every step per pass: batch-independent numbers
            wave = self._griffin_lim_frames(self._magnitude_frames(flat[i:i + self.clips_per_pass]))
            peak = wave.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8)
            waves.append(0.95 * wave / peak)
        return torch.cat(waves).reshape(*lead, -1).numpy().astype(np.float32)

    # ------------------------------------------------------------ frames-major internals

    def _magnitude_frames(self, scaled: torch.Tensor) -> torch.Tensor:
        """[..., n_mels, frames] -> magnitude [..., frames, n_freqs] (the layout the FFTs want)."""
        power = torch.pow(10.0, scaled_to_db(scaled, self.cfg) / 10.0)
        linear = torch.clamp(power.transpose(-1, -2) @ self.mel_pinv_t, min=0.0)
        return torch.sqrt(linear)

    def _envelope(self, frames: int) -> tuple[int, torch.Tensor]:
        """(output samples, 1 / overlap-added squared window over them) for a frame count."""
        if frames not in self._envelopes:
            n_fft, hop = self.cfg.n_fft, self.cfg.hop_length
            # the clip length for the configured frame count, else what torch.istft gives
            length = self.cfg.num_samples if frames == self.cfg.num_frames else hop * (frames - 1)
            squared = (self.window ** 2).expand(frames, n_fft)
            envelope = self._overlap_add(squared[None])[0]
            self._envelopes[frames] = (length, 1.0 / envelope[n_fft // 2:n_fft // 2 + length])
        return self._envelopes[frames]

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """[clips, frames, n_fft] -> [clips, n_fft + hop * (frames - 1)]."""
        clips, count, n_fft = frames.shape
        hop = self.cfg.hop_length
        total = n_fft + hop * (count - 1)
        if n_fft % hop:  # the general (slower) path
            folded = torch.nn.functional.fold(frames.transpose(1, 2), (1, total), (1, n_fft), stride=(1, hop))
            return folded.reshape(clips, total)
        shifts = n_fft // hop  # each frame spans `shifts` hops: add hop-sized blocks, one shift at a time
        blocks = frames.reshape(clips, count, shifts, hop)
        out = frames.new_zeros(clips, count + shifts - 1, hop)
        for shift in range(shifts):
            out[:, shift:shift + count] += blocks[:, :, shift]
        return out.reshape(clips, total)

    def _istft(self, spectra: torch.Tensor) -> torch.Tensor:
        """Complex [clips, frames, n_freqs] -> [clips, samples] (centered, as torch.istft)."""
        length, inverse_envelope = self._envelope(spectra.shape[1])
        frames = torch.fft.irfft(spectra, n=self.cfg.n_fft, dim=-1).mul_(self.window)
        start = self.cfg.n_fft // 2
        return self._overlap_add(frames)[:, start:start + length] * inverse_envelope

    def _stft(self, waves: torch.Tensor) -> torch.Tensor:
        """[clips, samples] -> complex [clips, frames, n_freqs] (centered, reflect-padded)."""
        n_fft = self.cfg.n_fft
        padded = torch.nn.functional.pad(waves[:, None], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
        return torch.fft.rfft(padded.unfold(-1, n_fft, self.cfg.hop_length) * self.window, dim=-1)

    def _griffin_lim_frames(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Magnitude [clips, frames, n_freqs] -> waveform [clips, samples]."""
        spectra = magnitude.to(torch.complex64)  # zero initial phase: deterministic
        previous = None
        for _ in range(self.n_iter):
            rebuilt = self._stft(self._istft(spectra))
            angles = rebuilt if previous is None else rebuilt - self.momentum * previous
            spectra = angles * (magnitude / angles.abs().add_(1e-16))
            previous = rebuilt
        return self._istft(spectra)


def spectral_convergence(target_magnitude: torch.Tensor, wave: torch.Tensor, cfg: AudioConfig = AudioConfig()) -> torch.Tensor:
    """|| target - |STFT(wave)| ||_F / || target ||_F per clip (0 is a perfect match).

    target_magnitude [..., n_freqs, frames] (e.g. ``MelInverter.magnitude``), wave
    [..., samples] at the target's scale (``MelInverter.griffin_lim``, not peak-normalized).
    """
    wave = torch.as_tensor(wave, dtype=torch.float32)
    lead = wave.shape[:-1]
    stft = torch.stft(wave.reshape(-1, wave.shape[-1]), cfg.n_fft, cfg.hop_length, window=torch.hann_window(cfg.n_fft),
                      center=True, pad_mode="reflect", return_complex=True).abs()
    target = torch.as_tensor(target_magnitude, dtype=torch.float32).reshape(stft.shape)
    error = torch.linalg.matrix_norm(target - stft) / torch.linalg.matrix_norm(target).clamp(min=1e-12)
    return error.reshape(lead)
