"""Training throughput (clips/s) per model, demo preset, plain torch loops on 2 threads.

Each model gets random mels in [-1, 1] of shape (batch, 1, 128, 173) with random labels and
does full training steps (forward, loss, backward, gradient clipping 0.5, AdamW) with the
same loss code as emogen.training's Tasks:

- SER: demo ResNetSER, cross-entropy (SERTask.loss);
- VAE: demo ConditionalVAE, recon + spectral + beta*KL (VAETask.loss);
- latent diffusion: the demo VAE encoder, frozen (eval, no grad), encodes the batch to
  4 x 16 x 22 latents, then the demo U-Net takes an MSE noise-prediction step
  (emogen.models.diffusion.diffusion_loss). Also timed without the encoder (U-Net only).
- paper mel-space U-Net (3.5 M params, 4 levels, attention at 32 x 44 and 16 x 22) at
  batch 4 for one or two steps: the record of why the demo preset diffuses in latent space.

Warm-up steps are excluded. Weights are untrained; throughput does not depend on them.
Every demo model is timed in both memory layouts in the same run: contiguous (NCHW, the
PyTorch default) and channels-last (NHWC, what emogen.models.NETWORKS builds), and the
ratio printed.

    .venv/bin/python benchmarks/train_throughput.py
    .venv/bin/python benchmarks/train_throughput.py --steps 10 --paper-steps 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch

from common import load_avg, write_result

N_MELS, FRAMES = 128, 173


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def train_step_fn(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=1e-4)

    def step() -> None:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()

    model.train()
    return step


def time_demo_models(cfgs: dict, mel: torch.Tensor, label: torch.Tensor, layout: torch.memory_format,
                     args: argparse.Namespace, record: Callable[..., None]) -> None:
    """SER, VAE and latent diffusion training steps with every network in one memory layout."""
    from emogen.models.diffusion import diffusion_loss, make_train_scheduler
    from emogen.models.unet import UNet
    from emogen.training import SERTask, VAETask, train_config

    tag = "channels-last" if layout == torch.channels_last else "contiguous"
    b = args.batch_size
    # SER
    ser_task = SERTask(cfgs, train_config("ser", "demo"), {})
    ser = ser_task.build().to(memory_format=layout)
    record(f"SER ResNet (demo), {tag}", ser, b, time_steps(train_step_fn(ser, lambda: ser_task.loss(ser, mel, label, 0)[0]), args.warmup, args.steps))

    # VAE
    vae_task = VAETask(cfgs, train_config("vae", "demo"), {})
    vae = vae_task.build().to(memory_format=layout)
    record(f"VAE (demo), {tag}", vae, b, time_steps(train_step_fn(vae, lambda: vae_task.loss(vae, mel, label, 0)[0]), args.warmup, args.steps))

    # Latent diffusion with the frozen VAE encoder (untrained weights; scale from the batch)
    vae.eval().requires_grad_(False)
    unet = UNet(cfgs["unet"]).to(memory_format=layout)
    sched = make_train_scheduler(cfgs["diffusion"])
    with torch.no_grad():
        scale = float(1.0 / vae.encode(mel.unsqueeze(1), label)[0].std().clamp(min=1e-6))

    def latent_loss() -> torch.Tensor:
        with torch.no_grad():
            z = vae.encode(mel.unsqueeze(1), label)[0] * scale
        return diffusion_loss(unet, sched, z, label)

    record(f"latent diffusion U-Net + frozen VAE encoder (demo), {tag}", unet, b,
           time_steps(train_step_fn(unet, latent_loss), args.warmup, args.steps), "latents 4x32x44")
    with torch.no_grad():
        z_fixed = vae.encode(mel.unsqueeze(1), label)[0] * scale
    record(f"latent diffusion U-Net only, precomputed latents (demo), {tag}", unet, b,
           time_steps(train_step_fn(unet, lambda: diffusion_loss(unet, sched, z_fixed, label)), args.warmup, args.steps), "latents 4x32x44")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per demo model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paper-batch", type=int, default=4)
    parser.add_argument("--paper-steps", type=int, default=2, help="timed steps of the mel-space paper U-Net (0: skip)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)

    from emogen.models.diffusion import diffusion_loss, make_train_scheduler
    from emogen.models.unet import UNet
    from emogen.presets import model_configs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = load_avg()
    print(f"load average at start: {load_start}; torch threads {torch.get_num_threads()}", flush=True)
    cfgs = model_configs("demo")
    b = args.batch_size
    mel = torch.rand(b, N_MELS, FRAMES) * 2 - 1  # the Tasks take [B, n_mels, T]
    label = torch.randint(0, 6, (b,))
    rows: list[dict] = []

    def record(name: str, model: torch.nn.Module, batch: int, times: list[float], note: str = "") -> None:
        per = sum(times) / len(times)
        row = {"model": name, "params_m": round(count(model) / 1e6, 3), "batch": batch, "steps": len(times),
               "s_per_step": round(per, 4), "min_s_per_step": round(min(times), 4), "clips_per_s": round(batch / per, 2), "note": note}
        rows.append(row)
        print(f"  {name}: {per:.3f} s/step (min {min(times):.3f}), {batch / per:.1f} clips/s", flush=True)

    for layout in (torch.contiguous_format, torch.channels_last):
        time_demo_models(cfgs, mel, label, layout, args, record)

    # Paper: U-Net on mels
    if args.paper_steps > 0:
        pcfgs = model_configs("paper")
        punet = UNet(pcfgs["unet"])
        psched = make_train_scheduler(pcfgs["diffusion"])
        pb = args.paper_batch
        pmel = mel[:pb].unsqueeze(1) if pb <= b else torch.rand(pb, 1, N_MELS, FRAMES) * 2 - 1
        plabel = torch.randint(0, 6, (pb,))
        record("mel-space U-Net (paper)", punet, pb,
               time_steps(train_step_fn(punet, lambda: diffusion_loss(punet, psched, pmel, plabel)), 1, args.paper_steps),
               "mels 1x128x173, 1 warm-up step")
        del punet

    load_end = load_avg()
    contiguous = {r["model"].rsplit(", ", 1)[0]: r for r in rows if r["model"].endswith(", contiguous")}
    speedups = {name: round(r["s_per_step"] / next(q["s_per_step"] for q in rows if q["model"] == f"{name}, channels-last"), 3)
                for name, r in contiguous.items()}
    print()
    print(f"training throughput, {args.threads} threads, random mels (B, 1, {N_MELS}, {FRAMES}), warm-up excluded")
    print(f"{'model':<72} {'params':>8} {'batch':>5} {'s/step':>8} {'min':>7} {'clips/s':>8}")
    for r in rows:
        print(f"{r['model']:<72} {r['params_m']:>7.2f}M {r['batch']:>5} {r['s_per_step']:>8.3f} {r['min_s_per_step']:>7.3f} {r['clips_per_s']:>8.1f}")
    for name, ratio in speedups.items():
        print(f"channels-last vs contiguous, {name}: {ratio:.2f}x")
    print(f"load average: start {load_start}, end {load_end}")
    result = {"benchmark": "train_throughput", "threads": args.threads, "load_avg_start": load_start,
              "load_avg_end": load_end, "rows": rows, "channels_last_speedup": speedups}
    write_result(result, args.json_out)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
