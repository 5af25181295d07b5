"""Response bodies: WAV, a zip of WAVs, NPY mels, and the JSON payload (base64 WAVs and a
PNG of the mels). Same clips in, same bytes out."""

from __future__ import annotations

import base64
import io
import zipfile
from typing import Sequence

import numpy as np
import soundfile as sf

from emogen.inference.schema import Job


def wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def clip_names(job: Job) -> list[str]:
    return [f"{job.emotion}_seed{job.seed}_{i:02d}.wav" for i in range(job.num_samples)]


def zip_bytes(waves: np.ndarray, sample_rate: int, names: Sequence[str]) -> bytes:
    """Stored WAVs with a fixed timestamp, so the same clips give the same zip bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for wave, name in zip(waves, names):
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), wav_bytes(wave, sample_rate))
    return buf.getvalue()


def npy_bytes(mels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(mels, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def mel_png(mels: np.ndarray, titles: Sequence[str] | None = None) -> bytes:
    """A row of mel-spectrogram images (server-side matplotlib, Agg) as PNG bytes."""
    # deferred: only a JSON response with image=true draws; matplotlib would slow every replica's start
    import matplotlib

    matplotlib.use("Agg")
    # deferred: as matplotlib, after its backend is chosen
    from matplotlib.figure import Figure

    n = len(mels)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), dpi=80)
    for i, mel in enumerate(mels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=-1, vmax=1)
        ax.set_title(titles[i] if titles else f"clip {i}", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def json_payload(job: Job, mels: np.ndarray, waves: np.ndarray, sample_rate: int, info: dict, image: bool, seconds: float) -> dict:
    names = clip_names(job)
    diffusion = info.get("model") == "diffusion"
    payload = {
        "model": info.get("model"),
        "checkpoint": info.get("checkpoint"),
        "emotion": job.emotion,
        "num_samples": job.num_samples,
        "sampler": job.sampler if diffusion else None,
        "steps": job.steps if diffusion else None,
        "guidance_scale": job.guidance_scale if diffusion else None,
        "eta": job.eta if diffusion else None,
        "seed": job.seed,
        "sample_rate": sample_rate,
        "mel_shape": list(mels.shape),
        "seconds": round(seconds, 3),
        "clips": [
            {"name": name, "duration_s": round(len(w) / sample_rate, 3), "wav_base64": base64.b64encode(wav_bytes(w, sample_rate)).decode()}
            for name, w in zip(names, waves)
        ],
    }
    if image:
        payload["mel_png_base64"] = base64.b64encode(mel_png(mels, [n[:-4] for n in names])).decode()
    return payload
