"""Where the VAE draws its latents from: the prior N(0, I) or each emotion's fitted
distribution of encoder means (emogen.models.vae), at the demo's KL weight and the seed's.

On one speaker fold of a features folder (emogen.data.datasets.speaker_folds, as the experiment
splits): a judge SER trained on the fold's train+val clips with its own seed (the
experiment's independent judge), then per KL weight (--betas) a VAE of the preset trained
on the fold's train speakers; per VAE and latent source, --per-emotion clips of every
emotion, scored against the fold's held-out real clips:

- clarity by the judge (share classified as the requested emotion), overall and per emotion;
- the judge's own UA on the held-out real clips, the scale clarity is relative to;
- FID on the judge's embeddings, beside held-out real vs training real;
- the two-sample accuracy (0.5 = indistinguishable) and near-silent frames (emogen.evaluation.metrics).

Everything trains in this process through the project's worker loop (train_in_process on
in-memory shards, as benchmarks/ser_vs_probe.py does).

    .venv/bin/python benchmarks/vae_latent.py --data runs/demo/data --betas 0.001 0.1
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import tempfile
from typing import Any

import numpy as np

from common import finish
from emogen.config import EMOTIONS
from emogen.inference.generator import EmotionGenerator
from emogen.models.vae import LATENT_SOURCES
from judging import describe_score, fold_parser, judged_fold, parse_fold_args, requested_labels, train
from ser_vs_probe import parse_overrides


def per_element_only(generator: EmotionGenerator) -> EmotionGenerator:
    """A copy whose fitted latent distribution keeps its mean and total per-element
    variance but drops the principal directions (VAEConfig.latent_components = 0)."""
    import copy
    import dataclasses

    from emogen.models.vae import ConditionalVAE

    vae = generator.vae
    plain = ConditionalVAE(dataclasses.replace(vae.config, latent_components=0)).eval()
    state = {k: v for k, v in vae.state_dict().items() if k not in ("latent_basis", "latent_scales")}
    explained = (vae.latent_basis * vae.latent_scales[:, :, None]).pow(2).sum(1).view_as(vae.latent_std)
    state["latent_std"] = (vae.latent_std**2 + explained).sqrt()
    plain.load_state_dict(state)
    other = copy.copy(generator)
    other.vae = plain
    return other


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = fold_parser(__doc__.splitlines()[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.001, 0.1], help="VAE KL weights")
    parser.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs (default: the preset's)")
    parser.add_argument("--config", help="override sections as JSON (on top of the preset)")
    args = parse_fold_args(parser, argv)
    overrides = parse_overrides(args.config)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        fold = judged_fold(args.data, args.folds, args.fold, args.preset, args.judge_seed, f"{tmp}/judge", overrides)
        print(f"fold {args.fold}: {fold.describe()}", flush=True)
        shards = fold.shards()
        requested = requested_labels(args.per_emotion)
        for beta in args.betas:
            vae_overrides = {**overrides, "vae": {**overrides.get("vae", {}), "beta": beta}}
            if args.vae_epochs is not None:
                vae_overrides["train"] = {**overrides.get("train", {}), "epochs": args.vae_epochs}
            seconds = train("vae", shards, args.preset, vae_overrides, f"{tmp}/vae-{beta}")
            generator = EmotionGenerator.from_checkpoint(f"{tmp}/vae-{beta}")
            sources = [(latent, generator) for latent in LATENT_SOURCES]
            if generator.vae.config.latent_components > 0:  # the same weights, per-element Gaussian only
                sources.insert(1, ("diagonal", per_element_only(generator)))
            for latent, source in sources:
                generated = np.concatenate([source.generate(e, args.per_emotion, seed=k, vae_latent="posterior" if latent == "diagonal" else latent)
                                            for k, e in enumerate(EMOTIONS)])
                row = {"beta": beta, "latent": latent, "vae_seconds": seconds, **fold.score(requested, generated)}
                rows.append(row)
                print(f"beta {beta:g} {latent:9s}: {describe_score(row)}  (VAE {seconds:.0f} s)", flush=True)
    return finish(args, rows)


if __name__ == "__main__":
    main()
