"""Latent diffusion recipes against optimizer steps: what makes the demo's generator carry
every emotion and look like speech, and what it costs.

On one speaker fold of a features folder (as the experiment splits it): the experiment's
independent judge (an SER trained on the fold's train+val clips with its own seed) and
the preset's VAE, trained once and kept in --work; then per recipe (--recipes: a JSON
object of name -> override sections on top of the preset) a latent diffusion U-Net
trained on the fold's train speakers, checkpointed at each of --milestones epochs
(training resumes from the previous milestone, so one run gives the whole curve; exact
for the constant and plateau LR schedules, not for cosine, whose length is the epochs).
At every milestone and guidance scale (--guidance), --per-emotion clips per emotion are
generated and scored against the fold's held-out real clips:

- clarity by the judge, overall and per emotion, beside the judge's own UA on real clips;
- FID on the judge's embeddings, beside held-out real vs training real;
- the two-sample accuracy (0.5 = indistinguishable) and near-silent frames (emogen.metrics);
- optimizer steps and training seconds so far.

    .venv/bin/python benchmarks/diffusion_recipe.py --data runs/demo/data --work /tmp/recipes \\
        --recipes '{"demo": {}, "ema": {"train": {"ema_decay": 0.999, "lr_schedule": "constant"}}}' \\
        --milestones 25 50 100
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import load_avg, write_result
from emogen.checkpoint import load_state
from emogen.config import EMOTIONS
from emogen.data import decode_mels, read_features
from emogen.datasets import speaker_folds
from emogen.evaluate import SERClassifier
from emogen.generate import EmotionGenerator
from emogen.metrics import classification_report, clarity_per_emotion, frechet_distance, silent_frame_fraction, two_sample_accuracy
from emogen.training.driver import loop_config, train_in_process
from ser_vs_probe import TableShard, parse_overrides


def train(model: str, shards: dict[str, TableShard], preset: str, overrides: dict[str, Any], run_dir: Path,
          epochs: int | None = None, vae: Path | None = None) -> float:
    """Train (or resume, or find finished) a run in run_dir; seconds spent here."""
    config, _ = loop_config(model, preset, overrides, epochs=epochs, vae_checkpoint=vae)
    started = time.perf_counter()
    train_in_process(config, shards, run_dir)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True, help="checkpoints (kept: a re-run reuses the judge, the VAE and finished milestones)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--recipes", default='{"demo": {}}', help="JSON: recipe name -> override sections")
    parser.add_argument("--milestones", type=int, nargs="+", default=[25, 50, 100], help="epochs at which to score")
    parser.add_argument("--guidance", type=float, nargs="+", default=[4.0])
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's)")
    parser.add_argument("--vae-config", default="{}", help="JSON override sections of the VAE's training (on top of the preset)")
    parser.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs (default: the preset's)")
    parser.add_argument("--per-emotion", type=int, default=40)
    parser.add_argument("--judge-seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    recipes = parse_overrides(args.recipes)
    work = Path(args.work)

    table = read_features(args.data, columns=["clip_id", "dataset", "speaker", "label", "mel", "n_mels", "n_frames"])
    split = speaker_folds(table, args.folds, 0.15, seed=0)[args.fold]
    mels, labels = decode_mels(table), table["label"].to_numpy()
    test, train_rows = (split == "test").to_numpy(), (split == "train").to_numpy()

    judge_split = split.replace("val", "train")
    judge_shards = {s: TableShard(table[judge_split == s], seed=args.judge_seed) for s in ("train", "val")}
    train("ser", judge_shards, args.preset, {"train": {"seed": args.judge_seed}}, work / "judge")
    judge = SERClassifier.from_checkpoint(work / "judge")
    probs, real_embeddings = judge.predict(mels[test])
    judge_ua = classification_report(labels[test], probs.argmax(axis=1))["unweighted_accuracy"]
    _, train_embeddings = judge.predict(mels[train_rows])
    real_fid = frechet_distance(real_embeddings, train_embeddings)["fid"]
    real_silent = silent_frame_fraction(mels[test])
    print(f"fold {args.fold}: judge UA {judge_ua * 100:.1f} on {int(test.sum())} held-out clips; FID held-out vs "
          f"training real {real_fid:.1f}; real near-silent frames {real_silent * 100:.1f}%", flush=True)

    shards = {s: TableShard(table[split == s], seed=0) for s in ("train", "val")}
    train("vae", shards, args.preset, parse_overrides(args.vae_config), work / "vae", epochs=args.vae_epochs)
    requested = np.repeat(np.arange(len(EMOTIONS)), args.per_emotion)
    rows: list[dict[str, Any]] = []
    for name, overrides in recipes.items():
        run_dir, seconds = work / f"diffusion-{name}", 0.0
        for milestone in args.milestones:
            seconds += train("diffusion", shards, args.preset, overrides, run_dir, epochs=milestone, vae=work / "vae")
            steps = int(load_state(run_dir)["history"][-1]["steps"])
            generator = EmotionGenerator.from_checkpoint(run_dir)
            for scale in args.guidance:
                started = time.perf_counter()
                generated = np.concatenate([generator.generate(e, args.per_emotion, seed=k, guidance_scale=scale, steps=args.steps)
                                            for k, e in enumerate(EMOTIONS)])
                gen_seconds = time.perf_counter() - started
                gen_probs, gen_embeddings = judge.predict(generated)
                predicted = gen_probs.argmax(axis=1)
                per_emotion = clarity_per_emotion(requested, predicted)
                row = {
                    "recipe": name, "overrides": overrides, "epochs": milestone, "steps": steps, "train_seconds": seconds,
                    "guidance": scale, "clarity": float((predicted == requested).mean()), "clarity_per_emotion": per_emotion,
                    "judge_ua": judge_ua, "fid": frechet_distance(real_embeddings, gen_embeddings)["fid"], "real_fid": real_fid,
                    "two_sample": two_sample_accuracy(mels[test], generated)["accuracy"],
                    "silent_frames": silent_frame_fraction(generated), "real_silent_frames": real_silent,
                    "generate_seconds": gen_seconds,
                }
                rows.append(row)
                print(f"{name:12s} ep {milestone:4d} steps {steps:5d} ({seconds:5.0f} s) g {scale:g}: clarity {row['clarity'] * 100:5.1f} "
                      f"/ judge {judge_ua * 100:.1f} (" + " ".join(f"{e[:4]} {v * 100:.0f}" for e, v in per_emotion.items())
                      + f")  FID {row['fid']:.1f}  two-sample {row['two_sample']:.2f}  silent {row['silent_frames'] * 100:.1f}%", flush=True)
    print(f"load {load_avg()}")
    result = {"args": vars(args), "rows": rows, "load": load_avg()}
    write_result(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
