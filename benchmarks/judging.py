"""One speaker fold, the experiment's independent judge on it, and how a generated set
scores against the fold's held-out real clips: what benchmarks/vae_latent.py and
benchmarks/diffusion_recipe.py share.

The fold is the demo experiment's (emogen.data.datasets.speaker_folds); the judge is an SER of
the preset trained on the fold's train+val clips with its own seed, through the project's
worker loop in this process (train_in_process on in-memory shards, as
benchmarks/ser_vs_probe.py does).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emogen.config import EMOTIONS
from emogen.data.features import decode_mels, read_features
from emogen.data.datasets import speaker_folds
from emogen.inference.classifier import SERClassifier
from emogen.evaluation.metrics import classification_report, clarity_per_emotion, frechet_distance, silent_frame_fraction, two_sample_accuracy
from emogen.training.driver import loop_config, train_in_process
from ser_vs_probe import TableShard


def train(model: str, shards: dict[str, TableShard], preset: str, overrides: dict[str, Any], run_dir: str | Path,
          epochs: int | None = None, vae: str | Path | None = None) -> float:
    """Train (or resume, or find finished) a run in run_dir; seconds spent here."""
    config, _ = loop_config(model, preset, overrides, epochs=epochs, vae_checkpoint=vae)
    started = time.perf_counter()
    train_in_process(config, shards, run_dir)
    return time.perf_counter() - started


@dataclass
class JudgedFold:
    """A fold's clips, its judge and the real references generated sets are scored against."""

    table: pd.DataFrame
    split: pd.Series  # "train" | "val" | "test" per row of table
    mels: np.ndarray
    judge: SERClassifier
    judge_ua: float  # on the held-out real clips
    real_embeddings: np.ndarray  # the judge's, of the held-out real clips
    real_fid: float  # held-out vs training real
    real_silent: float  # near-silent frames of the held-out real clips
    judge_seconds: float

    @property
    def test(self) -> np.ndarray:
        return (self.split == "test").to_numpy()

    def shards(self) -> dict[str, TableShard]:
        """The fold's training and validation clips, as the generators train on them."""
        return {s: TableShard(self.table[self.split == s], seed=0) for s in ("train", "val")}

    def score(self, requested: np.ndarray, generated: np.ndarray) -> dict[str, Any]:
        """Clarity by the judge (overall, per emotion), FID on its embeddings, two-sample
        accuracy and near-silent frames, beside the real references."""
        probs, embeddings = self.judge.predict(generated)
        predicted = probs.argmax(axis=1)
        return {
            "clarity": float((predicted == requested).mean()), "clarity_per_emotion": clarity_per_emotion(requested, predicted),
            "judge_ua": self.judge_ua, "fid": frechet_distance(self.real_embeddings, embeddings)["fid"], "real_fid": self.real_fid,
            "two_sample": two_sample_accuracy(self.mels[self.test], generated)["accuracy"],
            "silent_frames": silent_frame_fraction(generated), "real_silent_frames": self.real_silent,
        }

    def describe(self) -> str:
        return (f"judge UA {self.judge_ua * 100:.1f} on {int(self.test.sum())} held-out clips ({self.judge_seconds:.0f} s); "
                f"FID held-out vs training real {self.real_fid:.1f}; real near-silent frames {self.real_silent * 100:.1f}%")


def describe_score(row: dict[str, Any]) -> str:
    """One line: clarity beside the judge's UA, per emotion, FID, two-sample, near-silent."""
    return (f"clarity {row['clarity'] * 100:5.1f} / judge {row['judge_ua'] * 100:.1f} ("
            + " ".join(f"{e[:4]} {v * 100:.0f}" for e, v in row["clarity_per_emotion"].items())
            + f")  FID {row['fid']:.1f}  two-sample {row['two_sample']:.2f}  silent {row['silent_frames'] * 100:.1f}%")


def judged_fold(data: str | Path, folds: int, fold: int, preset: str, judge_seed: int, judge_dir: str | Path,
                overrides: dict[str, Any] | None = None) -> JudgedFold:
    """Fold `fold` of `folds` of a features folder and its judge (trained into judge_dir)."""
    overrides = overrides or {}
    table = read_features(data, columns=["clip_id", "dataset", "speaker", "label", "mel", "n_mels", "n_frames"])
    split = speaker_folds(table, folds, 0.15, seed=0)[fold]
    mels, labels = decode_mels(table), table["label"].to_numpy()
    test, train_rows = (split == "test").to_numpy(), (split == "train").to_numpy()
    judge_split = split.replace("val", "train")
    judge_shards = {s: TableShard(table[judge_split == s], seed=judge_seed) for s in ("train", "val")}
    judge_overrides = {**overrides, "train": {**overrides.get("train", {}), "seed": judge_seed}}
    seconds = train("ser", judge_shards, preset, judge_overrides, judge_dir)
    judge = SERClassifier.from_checkpoint(judge_dir)
    probs, real_embeddings = judge.predict(mels[test])
    _, train_embeddings = judge.predict(mels[train_rows])
    return JudgedFold(
        table=table, split=split, mels=mels, judge=judge,
        judge_ua=classification_report(labels[test], probs.argmax(axis=1))["unweighted_accuracy"],
        real_embeddings=real_embeddings, real_fid=frechet_distance(real_embeddings, train_embeddings)["fid"],
        real_silent=silent_frame_fraction(mels[test]), judge_seconds=seconds,
    )


def requested_labels(per_emotion: int) -> np.ndarray:
    """The emotion indices of per_emotion clips of every emotion, in EMOTIONS order."""
    return np.repeat(np.arange(len(EMOTIONS)), per_emotion)


def fold_parser(description: str) -> argparse.ArgumentParser:
    """The options both generator benchmarks take: the fold, the preset, the judge, the
    clips per emotion, threads and --json-out; each script adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", required=True)
    parser.add_argument("--folds", type=int, default=3, help="speaker folds (the demo experiment's)")
    parser.add_argument("--fold", type=int, default=0, help="the fold measured")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--per-emotion", type=int, default=40)
    parser.add_argument("--judge-seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out")
    return parser


def parse_fold_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, then quiet logging to warnings and set torch's threads."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    return args
