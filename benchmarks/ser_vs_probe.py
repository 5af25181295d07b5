"""The SER against the linear probe on speaker-grouped K folds of one features folder.

Per fold (emogen.data.datasets.speaker_folds: disjoint test speakers, every speaker tested
once, validation speakers from the rest) the preset's SER (plus --config overrides) is
trained on the fold's train speakers, validated on its val speakers, and the probe
(emogen.evaluation.probe.LinearProbe) is fit on train+val; both are scored by UA on the fold's test
speakers. Prints per fold and the mean: SER UA, probe UA, difference (points), seconds.

The SER trains through the project's worker loop (emogen.training.run_training, via
train_in_process) in this process, without Ray: the shards are in-memory tables with the
interface the loop reads (iter_batches), and the SER is scored through SERClassifier on
the checkpoint it wrote, so what is measured is what the experiment would use.

    .venv/bin/python benchmarks/ser_vs_probe.py --data /tmp/d
    .venv/bin/python benchmarks/ser_vs_probe.py --data /tmp/d --config '{"ser": {"pooling": "stats"}, "train": {"epochs": 20}}'
"""

from __future__ import annotations

import os

# Before numpy / torch load: two cores, no oversubscription between BLAS and torch.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score

from common import load_avg, write_result
from emogen.data.features import decode_mels, read_features
from emogen.data.datasets import speaker_folds
from emogen.inference.classifier import SERClassifier
from emogen.evaluation.probe import LinearProbe
from emogen.training.driver import loop_config, train_in_process


class TableShard:
    """A split held in memory, read like a Ray dataset shard by the worker loop."""

    def __init__(self, table: pd.DataFrame, seed: int = 0) -> None:
        self.columns = {
            "mel": table["mel"].to_numpy(dtype=object),
            "n_mels": table["n_mels"].to_numpy(),
            "n_frames": table["n_frames"].to_numpy(),
            "label": table["label"].to_numpy(dtype=np.int64),
        }
        self.rng = np.random.default_rng(seed)

    def iter_batches(self, batch_size: int, batch_format: str = "numpy", drop_last: bool = False,
                     local_shuffle_buffer_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        n = len(self.columns["label"])
        order = self.rng.permutation(n) if local_shuffle_buffer_size else np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            yield {k: v[idx] for k, v in self.columns.items()}


def parse_overrides(text: str | None) -> dict[str, Any]:
    """--config: a JSON object of sections ({"ser": {...}, "train": {...}}) or a JSON/YAML file."""
    if not text:
        return {}
    if text.lstrip().startswith("{"):
        return json.loads(text)
    path = Path(text)
    if path.is_file():
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(path.read_text()) or {}
        return json.loads(path.read_text())
    return json.loads(text)


def train_ser(table: pd.DataFrame, split: pd.Series, preset: str, overrides: dict[str, Any], seed: int) -> tuple[SERClassifier, float]:
    overrides = {k: dict(v) for k, v in overrides.items()}
    overrides["train"] = {**overrides.get("train", {}), "seed": seed}
    config, _ = loop_config("ser", preset, overrides)
    datasets = {name: TableShard(table[split == name], seed=seed) for name in ("train", "val")}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        train_in_process(config, datasets, run_dir)
        classifier = SERClassifier.from_checkpoint(run_dir)
    return classifier, time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a preprocess output folder (or its features/)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--config", help="override sections as JSON, or a JSON/YAML file of them")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the SER's training seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.config)

    table = read_features(args.data, columns=["clip_id", "dataset", "speaker", "label", "mel", "n_mels", "n_frames"])
    mels = decode_mels(table)
    labels = table["label"].to_numpy()
    started = time.perf_counter()
    rows = []
    for fold, split in enumerate(speaker_folds(table, args.folds, args.val_fraction, args.split_seed)):
        test = (split == "test").to_numpy()
        fit = (split != "test").to_numpy()
        classifier, ser_seconds = train_ser(table, split, args.preset, overrides, args.seed)
        probs, _ = classifier.predict(mels[test])
        ser_ua = 100 * balanced_accuracy_score(labels[test], probs.argmax(axis=1))
        probe_started = time.perf_counter()
        probe = LinearProbe().fit(mels[fit], labels[fit])
        probe_ua = 100 * balanced_accuracy_score(labels[test], probe.predict(mels[test]))
        row = {
            "fold": fold, "test_speakers": int(table.loc[test, "speaker"].nunique()), "test_clips": int(test.sum()),
            "ser_ua": ser_ua, "probe_ua": probe_ua, "difference": ser_ua - probe_ua,
            "ser_seconds": ser_seconds, "probe_seconds": time.perf_counter() - probe_started,
        }
        rows.append(row)
        print(f"fold {fold}: {row['test_speakers']} test speakers ({row['test_clips']} clips)  SER UA {ser_ua:5.1f}  "
              f"probe UA {probe_ua:5.1f}  difference {row['difference']:+5.1f}  SER {ser_seconds:.0f} s", flush=True)
    frame = pd.DataFrame(rows)
    mean = frame[["ser_ua", "probe_ua", "difference", "ser_seconds"]].mean()
    seconds = time.perf_counter() - started
    print(f"mean over {len(rows)} folds: SER UA {mean.ser_ua:.1f}  probe UA {mean.probe_ua:.1f}  "
          f"difference {mean.difference:+.1f} (min {frame.difference.min():+.1f})  "
          f"{mean.ser_seconds:.0f} s per SER, {seconds:.0f} s in all  (load {load_avg()})")
    result = {"args": vars(args), "overrides": overrides, "folds": rows, "mean": mean.to_dict(), "seconds": seconds, "load": load_avg()}
    write_result(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
