"""Sampling cost: DDIM (50 steps) and DPM-Solver (20 steps) vs DDPM (1000 steps).

A batch of 8 clips (emotions 0..5, 0, 1) with the demo-preset U-Net in latent space,
shape (4, 16, 22) per clip, through emogen.models.diffusion.sample with the diffusers samplers
from emogen.models.diffusion.make_sampler, each with classifier-free guidance off (scale 1.0:
one U-Net pass per step) and on (scale 2.0: two passes per step). Then the rest of the
generation path for the same 8 clips: decoding latents to mels with the demo VAE decoder,
and mels to waveforms with Griffin-Lim (emogen.audio.mel.MelInverter, AudioConfig.griffin_lim_iters iterations).
Optionally (--paper-steps N > 0) a few DDIM steps of the mel-space paper U-Net for one clip
(1 x 128 x 173), extrapolated to 50 and 1000 steps per clip.

Untrained weights are fine for timing (cost does not depend on the weights) and are the
default. With --checkpoint (a latent-diffusion checkpoint from `emogen train diffusion`,
which carries its VAE) and --ser-checkpoint (a real-data SER checkpoint), the script
also reports emotional clarity per sampler: the SER's accuracy on the generated mels
against the requested emotion (--clarity-per-emotion clips per emotion).

    .venv/bin/python benchmarks/sampling.py
    .venv/bin/python benchmarks/sampling.py --checkpoint runs/train/diffusion-demo/.../state.pt \
        --ser-checkpoint runs/train/ser-demo/.../state.pt --clarity-per-emotion 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from common import load_avg, write_result

FRAMES = 173
LABELS = [0, 1, 2, 3, 4, 5, 0, 1]
SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpm", 20))


def load_ser(path: str):
    from emogen.checkpoint import load_model, load_state

    state = load_state(path)
    if state.get("model_name") != "ser":
        raise ValueError(f"{path} is a {state.get('model_name')!r} checkpoint, not an SER one")
    return load_model(state).eval()


@torch.no_grad()
def clarity(args, guidance: float) -> list[dict]:
    """Accuracy of the SER on generated mels against the requested emotion, per sampler."""
    from emogen.inference.generator import EmotionGenerator

    generator = EmotionGenerator.from_checkpoint(args.checkpoint)
    if generator.kind != "diffusion":
        raise ValueError(f"{args.checkpoint} is a {generator.kind!r} checkpoint, not a diffusion one")
    ser = load_ser(args.ser_checkpoint)
    labels = torch.arange(6).repeat_interleave(args.clarity_per_emotion)
    out = []
    for name, steps in SAMPLERS:
        if name == "ddpm" and not args.clarity_ddpm:
            continue
        t = time.perf_counter()
        preds = []
        for i in range(0, len(labels), 8):
            lab = labels[i:i + 8]
            seeded = torch.Generator().manual_seed(args.seed + i)
            mels = generator.generate_rows(lab, seeded, name, steps, guidance_scale=guidance, eta=0.0)
            preds.append(ser(torch.from_numpy(mels)[:, None]).argmax(dim=1))
        pred = torch.cat(preds)
        acc = (pred == labels).float().mean().item()
        per = {e: (pred[labels == e] == e).float().mean().item() for e in range(6)}
        out.append({"sampler": name, "steps": steps, "guidance": guidance, "clips": len(labels),
                    "clarity": round(acc, 4), "per_emotion": {k: round(v, 3) for k, v in per.items()},
                    "seconds": round(time.perf_counter() - t, 1)})
        print(f"  clarity {name}-{steps} (guidance {guidance}): {acc:.3f} on {len(labels)} clips", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--ddpm-steps", type=int, default=1000)
    parser.add_argument("--griffin-lim-iters", type=int, default=None, help="default: AudioConfig.griffin_lim_iters")
    parser.add_argument("--paper-steps", type=int, default=3, help="DDIM steps of the mel-space paper U-Net, batch 1 (0: skip)")
    parser.add_argument("--checkpoint", help="latent-diffusion checkpoint (with its VAE) for the clarity measurement")
    parser.add_argument("--ser-checkpoint", help="SER checkpoint for the clarity measurement")
    parser.add_argument("--clarity-per-emotion", type=int, default=8)
    parser.add_argument("--clarity-ddpm", action="store_true", help="also measure clarity for DDPM-1000 (slow)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the interleaved per-step measurement")
    parser.add_argument("--probe-steps", type=int, default=20, help="steps per sampler in the interleaved measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)

    from emogen.audio.mel import MelInverter
    from emogen.config import AudioConfig
    from emogen.models.diffusion import make_sampler, sample
    from emogen.models.unet import UNet
    from emogen.models.vae import ConditionalVAE
    from emogen.presets import model_configs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start_load = load_avg()
    print(f"load average at start: {start_load}; torch threads {torch.get_num_threads()}", flush=True)
    cfgs = model_configs("demo")
    unet = UNet(cfgs["unet"]).eval()
    vae = ConditionalVAE(cfgs["vae"]).eval()
    labels = torch.tensor(LABELS)
    shape = vae.latent_shape(FRAMES)  # (4, 16, 22)
    samplers = [(n, args.ddpm_steps if n == "ddpm" else s) for n, s in SAMPLERS]

    # warm-up (first forwards allocate, pick kernels)
    sample(unet, make_sampler("ddim", cfgs["diffusion"]), labels, shape, 3, guidance_scale=args.guidance)

    # Full runs. The machine is shared, so the few-step samplers run right before and
    # right after DDPM (bracketing it) and their two times are averaged.
    rows = []
    for guidance in (1.0, args.guidance):
        times: dict[str, list[float]] = {}
        order = [s for s in samplers if s[0] != "ddpm"] + [s for s in samplers if s[0] == "ddpm"] + [s for s in samplers if s[0] != "ddpm"]
        for name, steps in order:
            sched = make_sampler(name, cfgs["diffusion"])
            t = time.perf_counter()
            z = sample(unet, sched, labels, shape, steps, guidance_scale=guidance, seed=args.seed)
            sec = time.perf_counter() - t
            assert torch.isfinite(z).all(), f"{name} produced non-finite latents"
            times.setdefault(name, []).append(sec)
            print(f"  {name}-{steps}, guidance {guidance}: {sec:.2f} s ({1000 * sec / steps:.1f} ms/step), load {load_avg()}", flush=True)
        for name, steps in samplers:
            sec = sum(times[name]) / len(times[name])
            rows.append({"sampler": name, "steps": steps, "guidance": guidance, "unet_passes": steps * (2 if guidance != 1.0 else 1),
                         "seconds": round(sec, 3), "runs": [round(x, 3) for x in times[name]], "ms_per_step": round(1000 * sec / steps, 2)})
    for r in rows:
        ddpm = next(x for x in rows if x["sampler"] == "ddpm" and x["guidance"] == r["guidance"])
        r["speedup_vs_ddpm"] = round(ddpm["seconds"] / r["seconds"], 2)

    # Per-step cost, interleaved: every sampler runs the same number of steps, in rounds,
    # so load changes hit all of them alike; median ms/step -> ratio for the full counts.
    per_step: dict[str, dict[str, float]] = {}
    for guidance in (1.0, args.guidance):
        ms: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, _steps in samplers:
                t = time.perf_counter()
                sample(unet, make_sampler(name, cfgs["diffusion"]), labels, shape, args.probe_steps, guidance_scale=guidance, seed=args.seed)
                ms.setdefault(name, []).append(1000 * (time.perf_counter() - t) / args.probe_steps)
        med = {name: float(sorted(v)[len(v) // 2]) for name, v in ms.items()}
        per_step[str(guidance)] = {name: round(v, 2) for name, v in med.items()}
        print(f"  interleaved ms/step (guidance {guidance}, {args.probe_steps} steps x {args.rounds} rounds, median): "
              + ", ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
    for r in rows:
        med = per_step[str(r["guidance"])]
        ddpm_steps = next(s for n, s in samplers if n == "ddpm")
        r["interleaved_ms_per_step"] = med[r["sampler"]]
        r["speedup_from_interleaved"] = round(ddpm_steps * med["ddpm"] / (r["steps"] * med[r["sampler"]]), 2)

    # decode the 8 latents: VAE decoder, then Griffin-Lim
    with torch.no_grad():
        vae.decode(z, labels, frames=FRAMES)  # warm-up
        t = time.perf_counter()
        mels = vae.decode(z, labels, frames=FRAMES)
        vae_s = time.perf_counter() - t
    args.griffin_lim_iters = args.griffin_lim_iters or AudioConfig().griffin_lim_iters
    inverter = MelInverter(AudioConfig(), n_iter=args.griffin_lim_iters)
    inverter(mels[:1, 0])  # warm-up (builds the pseudo-inverse)
    t = time.perf_counter()
    waves = inverter(mels[:, 0])
    gl_s = time.perf_counter() - t
    print(f"  VAE decode 8 latents -> mels {tuple(mels.shape)}: {vae_s:.3f} s; Griffin-Lim ({args.griffin_lim_iters} iters) 8 clips -> {waves.shape}: {gl_s:.2f} s", flush=True)

    paper = None
    if args.paper_steps > 0:
        pcfgs = model_configs("paper")
        punet = UNet(pcfgs["unet"]).eval()
        plab = torch.tensor([0])
        sample(punet, make_sampler("ddim", pcfgs["diffusion"]), plab, (1, 128, FRAMES), 1)  # warm-up
        t = time.perf_counter()
        sample(punet, make_sampler("ddim", pcfgs["diffusion"]), plab, (1, 128, FRAMES), args.paper_steps)
        per = (time.perf_counter() - t) / args.paper_steps
        paper = {"batch": 1, "timed_steps": args.paper_steps, "s_per_step": round(per, 3),
                 "extrapolated_ddim50_s": round(50 * per, 1), "extrapolated_ddpm1000_s": round(1000 * per, 1),
                 "extrapolated_ddim50_guided_s": round(100 * per, 1), "extrapolated_ddpm1000_guided_s": round(2000 * per, 1)}
        print(f"  paper mel-space U-Net, batch 1: {per:.3f} s/step (no guidance)", flush=True)

    clar = None
    if args.checkpoint and args.ser_checkpoint:
        clar = clarity(args, args.guidance)

    end_load = load_avg()
    print()
    print("latent diffusion, demo U-Net, batch of 8 clips, latents (4, 16, 22), untrained weights (timing only)")
    print(f"{'sampler':<10} {'steps':>6} {'guidance':>8} {'U-Net passes':>12} {'seconds':>9} {'ms/step':>8} {'vs DDPM':>8} {'interleaved ms/step':>20} {'vs DDPM (interleaved)':>22}")
    for r in rows:
        print(f"{r['sampler']:<10} {r['steps']:>6} {r['guidance']:>8.1f} {r['unet_passes']:>12} {r['seconds']:>9.2f} {r['ms_per_step']:>8.1f} {r['speedup_vs_ddpm']:>7.1f}x"
              f" {r['interleaved_ms_per_step']:>20.1f} {r['speedup_from_interleaved']:>21.1f}x")
    print(f"decode 8 clips: VAE decoder {vae_s:.3f} s, Griffin-Lim {args.griffin_lim_iters} iters {gl_s:.2f} s")
    if paper:
        print(f"paper mel-space U-Net (1 x 128 x {FRAMES}), batch 1: {paper['s_per_step']:.3f} s/step -> "
              f"DDIM-50 {paper['extrapolated_ddim50_s']:.0f} s, DDPM-1000 {paper['extrapolated_ddpm1000_s']:.0f} s per clip (no guidance, extrapolated)")
    if clar:
        for c in clar:
            print(f"clarity {c['sampler']}-{c['steps']} guidance {c['guidance']}: {c['clarity']:.3f} ({c['clips']} clips)")
    else:
        print("clarity: not measured (needs --checkpoint and --ser-checkpoint from trained models; comes with the experiment)")
    ddim = next(r for r in rows if r["sampler"] == "ddim" and r["guidance"] == args.guidance)
    worst = min(ddim["speedup_vs_ddpm"], ddim["speedup_from_interleaved"])
    print(f"DDIM-50 vs DDPM-{args.ddpm_steps} with guidance {args.guidance}: {ddim['speedup_vs_ddpm']:.1f}x measured, "
          f"{ddim['speedup_from_interleaved']:.1f}x from interleaved per-step cost (target >= 15x: {'met' if worst >= 15 else 'missed'}); "
          f"load average start {start_load}, end {end_load}")
    result = {"benchmark": "sampling", "threads": args.threads, "batch": len(LABELS), "latent_shape": list(shape),
              "rows": rows, "interleaved_ms_per_step": per_step, "vae_decode_s": round(vae_s, 4), "griffin_lim_s": round(gl_s, 3),
              "griffin_lim_iters": args.griffin_lim_iters, "paper_mel_unet": paper, "clarity": clar,
              "load_avg_start": start_load, "load_avg_end": end_load}
    write_result(result, args.json_out)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
