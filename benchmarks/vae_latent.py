"""Where the VAE draws its latents from: the prior N(0, I) or each emotion's fitted
distribution of encoder means (emogen.models.vae), at the demo's KL weight and the seed's.

On one speaker fold of a features folder (emogen.datasets.speaker_folds, as the experiment
splits): a judge SER trained on the fold's train+val clips with its own seed (the
experiment's independent judge), then per KL weight (--betas) a VAE of the preset trained
on the fold's train speakers; per VAE and latent source, --per-emotion clips of every
emotion, scored against the fold's held-out real clips:

- clarity by the judge (share classified as the requested emotion), overall and per emotion;
- the judge's own UA on the held-out real clips, the scale clarity is relative to;
- FID on the judge's embeddings, beside held-out real vs training real;
- the two-sample accuracy (0.5 = indistinguishable) and near-silent frames (emogen.metrics).

Everything trains in this process through the project's worker loop (train_in_process on
in-memory shards, as benchmarks/ser_vs_probe.py does).

    .venv/bin/python benchmarks/vae_latent.py --data runs/demo/data --betas 0.001 0.1
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse
import logging
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

from common import load_avg, write_result
from emogen.config import EMOTIONS
from emogen.data import decode_mels, read_features
from emogen.datasets import speaker_folds
from emogen.evaluate import SERClassifier
from emogen.generate import EmotionGenerator
from emogen.metrics import classification_report, clarity_per_emotion, frechet_distance, silent_frame_fraction, two_sample_accuracy
from emogen.models.vae import LATENT_SOURCES
from emogen.training.driver import loop_config, train_in_process
from ser_vs_probe import TableShard, parse_overrides


def train(model: str, shards: dict[str, TableShard], preset: str, overrides: dict[str, Any], run_dir: str) -> float:
    config, _ = loop_config(model, preset, overrides)
    started = time.perf_counter()
    train_in_process(config, shards, run_dir)
    return time.perf_counter() - started


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--folds", type=int, default=3, help="speaker folds (the demo experiment's)")
    parser.add_argument("--fold", type=int, default=0, help="the fold measured")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.001, 0.1], help="VAE KL weights")
    parser.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs (default: the preset's)")
    parser.add_argument("--per-emotion", type=int, default=40)
    parser.add_argument("--judge-seed", type=int, default=1000)
    parser.add_argument("--config", help="override sections as JSON (on top of the preset)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.config)

    table = read_features(args.data, columns=["clip_id", "dataset", "speaker", "label", "mel", "n_mels", "n_frames"])
    split = speaker_folds(table, args.folds, 0.15, seed=0)[args.fold]
    mels, labels = decode_mels(table), table["label"].to_numpy()
    test, train_rows = (split == "test").to_numpy(), (split == "train").to_numpy()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        judge_split = split.replace("val", "train")
        judge_shards = {s: TableShard(table[judge_split == s], seed=args.judge_seed) for s in ("train", "val")}
        judge_overrides = {**overrides, "train": {**overrides.get("train", {}), "seed": args.judge_seed}}
        judge_seconds = train("ser", judge_shards, args.preset, judge_overrides, f"{tmp}/judge")
        judge = SERClassifier.from_checkpoint(f"{tmp}/judge")
        probs, real_embeddings = judge.predict(mels[test])
        judge_ua = classification_report(labels[test], probs.argmax(axis=1))["unweighted_accuracy"]
        _, train_embeddings = judge.predict(mels[train_rows])
        real_fid = frechet_distance(real_embeddings, train_embeddings)["fid"]
        print(f"fold {args.fold}: judge UA {judge_ua * 100:.1f} on {int(test.sum())} held-out clips ({judge_seconds:.0f} s); "
              f"FID held-out vs training real {real_fid:.1f}; real near-silent frames "
              f"{silent_frame_fraction(mels[test]) * 100:.1f}%", flush=True)
        shards = {s: TableShard(table[split == s], seed=0) for s in ("train", "val")}
        requested = np.repeat(np.arange(len(EMOTIONS)), args.per_emotion)
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
                generated = np.concatenate([source.generate(e, args.per_emotion, seed=k, vae_latent=latent if latent != "diagonal" else "posterior")
                                            for k, e in enumerate(EMOTIONS)])
                gen_probs, gen_embeddings = judge.predict(generated)
                predicted = gen_probs.argmax(axis=1)
                per_emotion = clarity_per_emotion(requested, predicted)
                row = {
                    "beta": beta, "latent": latent, "clarity": float((predicted == requested).mean()),
                    "clarity_per_emotion": per_emotion, "judge_ua": judge_ua,
                    "fid": frechet_distance(real_embeddings, gen_embeddings)["fid"], "real_fid": real_fid,
                    "two_sample": two_sample_accuracy(mels[test], generated)["accuracy"],
                    "silent_frames": silent_frame_fraction(generated), "vae_seconds": seconds,
                }
                rows.append(row)
                print(f"beta {beta:g} {latent:9s}: clarity {row['clarity'] * 100:5.1f} (judge UA {judge_ua * 100:.1f}; "
                      + " ".join(f"{e[:4]} {v * 100:.0f}" for e, v in per_emotion.items())
                      + f")  FID {row['fid']:.1f}  two-sample {row['two_sample']:.2f}  silent {row['silent_frames'] * 100:.1f}%"
                      f"  (VAE {seconds:.0f} s)", flush=True)
    print(f"load {load_avg()}")
    result = {"args": vars(args), "rows": rows, "load": load_avg()}
    write_result(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
