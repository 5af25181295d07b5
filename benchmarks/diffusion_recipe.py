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
- the two-sample accuracy (0.5 = indistinguishable) and near-silent frames (emogen.evaluation.metrics);
- optimizer steps and training seconds so far.

    .venv/bin/python benchmarks/diffusion_recipe.py --data runs/demo/data --work /tmp/recipes \\
        --recipes '{"demo": {}, "ema": {"train": {"ema_decay": 0.999, "lr_schedule": "constant"}}}' \\
        --milestones 25 50 100
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import time
from pathlib import Path
from typing import Any

import numpy as np

from common import finish
from emogen.checkpoint import load_state
from emogen.config import EMOTIONS
from emogen.inference.generator import EmotionGenerator
from judging import describe_score, fold_parser, judged_fold, parse_fold_args, requested_labels, train
from ser_vs_probe import parse_overrides


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = fold_parser(__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="checkpoints (kept: a re-run reuses the judge, the VAE and finished milestones)")
    parser.add_argument("--recipes", default='{"demo": {}}', help="JSON: recipe name -> override sections")
    parser.add_argument("--milestones", type=int, nargs="+", default=[25, 50, 100], help="epochs at which to score")
    parser.add_argument("--guidance", type=float, nargs="+", default=[4.0])
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's)")
    parser.add_argument("--vae-config", default="{}", help="JSON override sections of the VAE's training (on top of the preset)")
    parser.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs (default: the preset's)")
    args = parse_fold_args(parser, argv)
    recipes = parse_overrides(args.recipes)
    work = Path(args.work)

    fold = judged_fold(args.data, args.folds, args.fold, args.preset, args.judge_seed, work / "judge")
    print(f"fold {args.fold}: {fold.describe()}", flush=True)
    shards = fold.shards()
    train("vae", shards, args.preset, parse_overrides(args.vae_config), work / "vae", epochs=args.vae_epochs)
    requested = requested_labels(args.per_emotion)
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
                row = {"recipe": name, "overrides": overrides, "epochs": milestone, "steps": steps, "train_seconds": seconds,
                       "guidance": scale, "generate_seconds": time.perf_counter() - started, **fold.score(requested, generated)}
                rows.append(row)
                print(f"{name:12s} ep {milestone:4d} steps {steps:5d} ({seconds:5.0f} s) g {scale:g}: {describe_score(row)}", flush=True)
    return finish(args, rows)


if __name__ == "__main__":
    main()
