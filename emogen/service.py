"""The synthesis service's library part: request schema, batched seeded synthesis, encoders,
the web page and the `emogen serve` subcommand. The Ray Serve application is serve/app.py.

Determinism by seed, batched or not. Requests batched on a replica by `@serve.batch` are
grouped by (sampler, steps, guidance_scale, eta) and stacked into one sampling loop, so
one U-Net call per step serves the whole group. Each request keeps its own
`torch.Generator(seed)`: it draws that request's initial noise and, for samplers with
per-step noise (DDPM, DDIM with eta > 0), that request's rows of the step noise (diffusers'
`randn_tensor` takes one generator per row), so the random numbers a request sees never
depend on its batch mates. Floating point must not depend on them either: CPU kernels pick
their algorithm by batch shape (measured here: a tiny U-Net row differs by ~6e-6 between a
batch of 1 and a batch of 2+, the VAE decoder between odd and even batches), so every model
call (U-Net step, VAE decode) runs on fixed chunks of exactly `stack_rows` rows, the last
chunk padded by repeating a row, and Griffin-Lim runs clip by clip (FFT-bound: stacking it
gains nothing on a CPU). A row's numbers are then the same whatever else shares its call, and the same request gives byte-identical WAV/NPY output alone or
batched (tests/test_serve.py checks both).
"""

from __future__ import annotations

import argparse
import base64
import io
import ipaddress
import json
import zipfile
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from emogen.config import EMOTIONS

FORMATS = ("wav", "zip", "npy", "json")
DEFAULT_STEP_BUDGET = 4000  # steps x num_samples per request
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_STACK_ROWS = 4


# ------------------------------------------------------------------------ request schema


class SynthesisRequest(BaseModel):
    """POST /v1/synthesize body. Unknown fields are rejected (422 naming them)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"emotion": "fear", "num_samples": 2, "steps": 20, "seed": 0, "format": "zip"}})

    emotion: Literal["anger", "sadness", "happiness", "neutral", "fear", "disgust"]
    num_samples: int = Field(1, ge=1, le=16, description="clips to generate (1-16); format 'wav' needs 1")
    model: Literal["diffusion", "vae"] | None = Field(None, description="must match the loaded checkpoint's kind when given")
    sampler: Literal["ddim", "ddpm", "dpm"] | None = Field(None, description="diffusion only; default: the checkpoint's")
    steps: int | None = Field(None, ge=1, le=1000, description="diffusion sampling steps; default: the checkpoint's")
    guidance_scale: float | None = Field(None, ge=0.0, le=20.0, description="classifier-free guidance scale")
    eta: float | None = Field(None, ge=0.0, le=1.0, description="DDIM only: 0 deterministic, 1 DDPM-like")
    seed: int = Field(0, ge=0, le=2**63 - 1)
    format: Literal["wav", "zip", "npy", "json"] = Field("json", description="wav: one clip; zip: WAVs; npy: mels; json: metadata + base64 WAVs + mel PNG")
    image: bool = Field(True, description="json only: include a PNG of the mel-spectrograms")

    @model_validator(mode="after")
    def _wav_is_one_clip(self) -> "SynthesisRequest":
        if self.format == "wav" and self.num_samples != 1:
            raise ValueError("num_samples: format 'wav' returns one clip, so num_samples must be 1 (use 'zip' or 'json' for several)")
        return self


class RequestError(ValueError):
    """A request that is valid JSON but not acceptable for this replica: (field, message)."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status

    def detail(self) -> dict:
        return {"detail": [{"loc": ["body", self.field], "msg": self.message, "type": "value_error"}], "message": f"{self.field}: {self.message}"}


@dataclass(frozen=True)
class Job:
    """A validated request with every default resolved: what the batched sampler consumes."""

    emotion: str
    num_samples: int
    sampler: str
    steps: int
    guidance_scale: float
    eta: float
    seed: int
    audio: bool = True  # False for format 'npy': no Griffin-Lim needed

    @property
    def group(self) -> tuple:
        return (self.sampler, self.steps, self.guidance_scale, self.eta)


def resolve(req: SynthesisRequest, generator, step_budget: int = DEFAULT_STEP_BUDGET) -> Job:
    """Fill defaults from the checkpoint and apply the replica's limits (RequestError)."""
    if req.model is not None and req.model != generator.kind:
        raise RequestError("model", f"this service has a {generator.kind!r} checkpoint loaded, not {req.model!r}")
    if generator.kind == "vae":  # one decoder pass: sampler/steps/guidance do not apply
        return Job(req.emotion, req.num_samples, "none", 0, 0.0, 0.0, req.seed, req.format != "npy")
    cfg = generator.diffusion
    steps = req.steps or cfg.num_inference_steps
    sampler = req.sampler or cfg.sampler
    if sampler == "ddpm" and req.steps is None:
        steps = min(cfg.num_train_timesteps, max(steps, 1))
    if steps * req.num_samples > step_budget:
        raise RequestError(
            "steps", f"steps x num_samples = {steps} x {req.num_samples} = {steps * req.num_samples} exceeds this service's "
            f"budget of {step_budget}; lower steps or num_samples")
    guidance = cfg.guidance_scale if req.guidance_scale is None else req.guidance_scale
    eta = cfg.eta if req.eta is None else req.eta
    return Job(req.emotion, req.num_samples, sampler, int(steps), float(guidance), float(eta), req.seed, req.format != "npy")


# ------------------------------------------------------------------ batched synthesis


def _chunked(fn, x, rows: int, *extra):
    """fn(x[chunk], *extra[chunk]) over fixed-size chunks of `rows` rows (last one padded)."""
    import torch

    n = x.shape[0]
    outs = []
    for start in range(0, n, rows):
        idx = list(range(start, min(start + rows, n)))
        real = len(idx)
        idx += [idx[-1]] * (rows - real)
        sel = torch.tensor(idx)
        out = fn(x[sel], *(e[sel] for e in extra))
        outs.append(out[:real])
    return torch.cat(outs)


def _noise(jobs: Sequence[Job], gens, shape, device):
    import torch

    rows = [torch.randn((1, *shape), generator=g) for job, g in zip(jobs, gens) for _ in range(job.num_samples)]
    return torch.cat(rows).to(device)


def synthesize_mels(generator, jobs: Sequence[Job], stack_rows: int = DEFAULT_STACK_ROWS) -> list[np.ndarray]:
    """Scaled log-mels [num_samples, 128, frames] for each job; jobs with the same
    (sampler, steps, guidance, eta) are stacked into one sampling loop. Deterministic per
    job whatever the batch (see the module docstring)."""
    import torch

    from emogen.config import EMOTION_TO_INDEX

    results: dict[int, np.ndarray] = {}
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.group, []).append(i)
    device = generator.device
    frames = generator.audio.num_frames
    with torch.no_grad():
        for key, members in groups.items():
            group = [jobs[i] for i in members]
            gens = [torch.Generator(device="cpu").manual_seed(j.seed) for j in group]
            row_gens = [g for j, g in zip(group, gens) for _ in range(j.num_samples)]
            labels = torch.tensor([EMOTION_TO_INDEX[j.emotion] for j in group for _ in range(j.num_samples)], device=device)
            if generator.unet is None:  # VAE: prior noise decoded as the emotion
                z = _noise(group, gens, generator.vae.latent_shape(frames), device)
                x = _chunked(lambda zz, ll: generator.vae.decode(zz, ll, frames), z, stack_rows, labels)
            else:
                x = _sample_stacked(generator, group, gens, row_gens, labels, stack_rows)
            mels = x[:, 0].clamp(-1, 1).cpu().numpy()
            offset = 0
            for i, job in zip(members, group):
                results[i] = mels[offset:offset + job.num_samples]
                offset += job.num_samples
    return [results[i] for i in range(len(jobs))]


def _sample_stacked(generator, group, gens, row_gens, labels, stack_rows):
    """diffusers' scheduler loop over the stacked group: one U-Net call per step (in fixed
    chunks), the scheduler step on the whole stack with one generator per row."""
    import torch

    from emogen.diffusion import make_sampler, scheduler_class

    job = group[0]
    cfg = generator.diffusion
    unet = generator.unet
    device = generator.device
    frames = generator.audio.num_frames
    shape = generator.vae.latent_shape(frames) if generator.vae is not None else (unet.config.in_channels, generator.audio.n_mels, frames)
    scheduler = make_sampler(job.sampler, cfg)
    x = _noise(group, gens, shape, device) * scheduler.init_noise_sigma
    scheduler.set_timesteps(job.steps, device=device)
    step_kwargs: dict[str, Any] = {"generator": row_gens if len(row_gens) > 1 else row_gens[0]}
    if isinstance(scheduler, scheduler_class("ddim")):
        step_kwargs["eta"] = job.eta
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t)
        t_batch = t.expand(x.shape[0]).to(device)
        pred = _chunked(lambda xx, tt, ll: unet.forward_with_cond_scale(xx, tt, ll, job.guidance_scale), model_in, stack_rows, t_batch, labels)
        x = scheduler.step(pred, t, x, **step_kwargs).prev_sample
    if generator.vae is not None:
        x = _chunked(lambda zz, ll: generator.vae.decode(zz / generator.latent_scale, ll, frames), x, stack_rows, labels)
    return x


class AudioRenderer:
    """Mels -> waves with Griffin-Lim, one clip per call (same numbers alone or batched;
    measured: batching Griffin-Lim on 2 CPU cores is no faster per clip)."""

    def __init__(self, audio_cfg, n_iter: int | None = None, stack_rows: int = DEFAULT_STACK_ROWS):
        from emogen.audio import MelInverter

        self.inverter = MelInverter(audio_cfg, n_iter=n_iter)
        self.sample_rate = audio_cfg.sample_rate
        self.stack_rows = stack_rows

    def __call__(self, mels: np.ndarray) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(mels, dtype=np.float32))
        return np.stack([self.inverter(x[i:i + 1])[0] for i in range(x.shape[0])])


# --------------------------------------------------------------------------- encoders


def wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

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
    import matplotlib

    matplotlib.use("Agg")
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
    payload = {
        "model": info.get("model"),
        "checkpoint": info.get("checkpoint"),
        "emotion": job.emotion,
        "num_samples": job.num_samples,
        "sampler": job.sampler if info.get("model") == "diffusion" else None,
        "steps": job.steps if info.get("model") == "diffusion" else None,
        "guidance_scale": job.guidance_scale if info.get("model") == "diffusion" else None,
        "eta": job.eta if info.get("model") == "diffusion" else None,
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


# ------------------------------------------------------------------------- security


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Without an API key the service only binds to loopback."""
    if not api_key and not is_loopback(host):
        raise SystemExit(
            f"refusing to bind the synthesis service to {host!r} without an API key: "
            "set --api-key (or EMOGEN_API_KEY) or bind to 127.0.0.1")


# --------------------------------------------------------------------------- web page

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EmoGen: emotional speech</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}label{margin-right:1em}
#clips audio{display:block;margin:.3em 0}#mel{max-width:100%}#status{color:#555}</style></head>
<body><h1>EmoGen</h1>
<form id="form">
<label>Emotion <select id="emotion">__OPTIONS__</select></label>
<label>Clips <input id="num_samples" type="number" min="1" max="16" value="1" style="width:4em"></label>
<label>Steps <input id="steps" type="number" min="1" max="1000" value="__STEPS__" style="width:5em"></label>
<label>Seed <input id="seed" type="number" min="0" value="0" style="width:6em"></label>
<label>API key <input id="apikey" type="password" style="width:8em"></label>
<button id="generate" type="submit">Generate</button>
</form>
<p id="status">Model: __MODEL__</p>
<img id="mel" alt="mel-spectrograms">
<div id="clips"></div>
<script>
document.getElementById('form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const status = document.getElementById('status');
  status.textContent = 'Generating...';
  const body = {emotion: document.getElementById('emotion').value,
    num_samples: parseInt(document.getElementById('num_samples').value),
    steps: parseInt(document.getElementById('steps').value),
    seed: parseInt(document.getElementById('seed').value), format: 'json'};
  const headers = {'Content-Type': 'application/json'};
  const key = document.getElementById('apikey').value;
  if (key) headers['X-API-Key'] = key;
  try {
    const r = await fetch('v1/synthesize', {method: 'POST', headers, body: JSON.stringify(body)});
    const data = await r.json();
    if (!r.ok) { status.textContent = 'Error ' + r.status + ': ' + (data.message || JSON.stringify(data.detail)); return; }
    document.getElementById('mel').src = 'data:image/png;base64,' + data.mel_png_base64;
    const clips = document.getElementById('clips');
    clips.innerHTML = '';
    for (const c of data.clips) {
      const a = document.createElement('audio');
      a.controls = true; a.preload = 'auto'; a.title = c.name;
      a.src = 'data:audio/wav;base64,' + c.wav_base64;
      clips.appendChild(a);
    }
    status.textContent = 'Done: ' + data.clips.length + ' clip(s) of ' + data.emotion + ' in ' + data.seconds + ' s';
  } catch (e) { status.textContent = 'Error: ' + e; }
});
</script></body></html>
"""


def page_html(info: dict) -> str:
    options = "".join(f'<option value="{e}">{e}</option>' for e in EMOTIONS)
    steps = info.get("default_steps") or 1
    return PAGE.replace("__OPTIONS__", options).replace("__STEPS__", str(steps)).replace("__MODEL__", str(info.get("model", "not loaded")))


# ------------------------------------------------------------------------ CLI command


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register `emogen serve` on an argparse subparsers object; the handler is set as
    `func` (call `args.func(args)`), blocks until Ctrl-C and returns a summary dict."""
    p = subparsers.add_parser("serve", help="serve a generator checkpoint over HTTP with Ray Serve")
    p.add_argument("--checkpoint", required=True, help="diffusion or VAE checkpoint directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--batch-wait-timeout", type=float, default=0.05, help="seconds")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--step-budget", type=int, default=DEFAULT_STEP_BUDGET, help="max steps x num_samples per request")
    p.add_argument("--api-key", default=None, help="require X-API-Key (default: $EMOGEN_API_KEY)")
    p.add_argument("--address", default=None, help="Ray address (default: start a local Ray)")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> dict:
    import os
    import time

    import ray
    from ray import serve

    api_key = args.api_key or os.environ.get("EMOGEN_API_KEY")
    check_bind(args.host, api_key)
    build_app = _serve_app_builder()
    if not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=True)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app({
        "checkpoint": args.checkpoint, "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_timeout, "num_replicas": args.replicas,
        "step_budget": args.step_budget, "api_key": api_key,
    })
    import signal

    def _stop(signum, frame):  # SIGTERM (ray job stop, containers) stops cleanly like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.time()
    print(f"[serve] http://{args.host}:{args.port}/ (API docs at /docs); Ctrl-C to stop", flush=True)
    try:
        serve.run(app, name="emogen", route_prefix="/")
        while True:  # block until Ctrl-C / SIGTERM
            time.sleep(1)
    except KeyboardInterrupt:
        print("[serve] stopping", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a repeated Ctrl-C must not abort the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return {"served": args.checkpoint, "host": args.host, "port": args.port, "seconds": round(time.time() - started, 1)}


def _serve_app_builder():
    """serve/app.py's build_app, importable whether or not the project root is on sys.path.

    serve/ is not an installed package: the project root goes on sys.path and PYTHONPATH
    (inherited by Ray workers started afterwards), and the module is registered to be
    pickled by value for workers of an already running Ray."""
    import os
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    if (Path(root) / "serve" / "app.py").exists() and root not in sys.path:
        sys.path.insert(0, root)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    from ray import cloudpickle

    from serve.app import build_app

    cloudpickle.register_pickle_by_value(sys.modules["serve.app"])
    return build_app
