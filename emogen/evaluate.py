"""Evaluating SER checkpoints and storing generated clips as features.

- `SERClassifier`: a trained SER checkpoint -> class probabilities and penultimate
  embeddings for any batch of scaled log-mels (FID / IS / clarity are computed on them).
- `held_out_report`: WA, UA, macro F1, confusion, and UA per held-out speaker, of any
  classifier's predictions (an SER's, the linear probe's).
- `evaluate_split`: those metrics of an SER on one speaker-independent split of a
  features dataset, the same split the training jobs used.
- `write_generated_features`: generated mels in the preprocessing's Parquet schema, so
  `emogen train ser --extra-train DIR` mixes them into training without a second format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from emogen.checkpoint import load_model, load_state
from emogen.config import EMOTIONS
from emogen.data import FEATURES_DIR, STATUS_OK, decode_mels, read_features
from emogen.metrics import classification_report, per_speaker_ua


class SERClassifier:
    """A trained ResNetSER (best validation weights) for inference."""

    def __init__(self, state: dict, device: str | torch.device = "cpu"):
        if state.get("model_name") != "ser":
            raise ValueError(f"expected a SER checkpoint, got a {state.get('model_name')!r} one")
        self.device = torch.device(device)
        self.model = load_model(state)
        self.model.to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "SERClassifier":
        return cls(load_state(path), device)

    @torch.no_grad()
    def predict(self, mels: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """mels [N, n_mels, frames] -> (probabilities [N, 6], embeddings [N, D])."""
        probs, embeds = [], []
        for start in range(0, len(mels), batch_size):
            # a copy: arrays from Ray's object store are read-only
            x = torch.tensor(mels[start : start + batch_size], dtype=torch.float32, device=self.device).unsqueeze(1)
            emb = self.model.embed(x)
            probs.append(torch.softmax(self.model.head(emb), dim=1).cpu().numpy())
            embeds.append(emb.cpu().numpy())
        if not probs:
            return np.zeros((0, len(EMOTIONS))), np.zeros((0, self.model.config.embed_dim))
        return np.concatenate(probs), np.concatenate(embeds)


def split_table(features: str | Path, assignment: dict[str, str], split: str) -> pd.DataFrame:
    table = read_features(features)
    return table[table["clip_id"].map(assignment) == split].reset_index(drop=True)


def held_out_report(labels: np.ndarray, preds: np.ndarray, speakers: np.ndarray) -> dict:
    """`classification_report` plus "per_speaker": UA of each held-out speaker's clips."""
    return {**classification_report(labels, preds), "per_speaker": per_speaker_ua(labels, preds, speakers)}


def evaluate_split(classifier: SERClassifier, features: str | Path, assignment: dict[str, str], split: str = "test") -> dict:
    """WA / UA / macro F1 / confusion and per-speaker UA of a classifier on one split of a features dataset."""
    table = split_table(features, assignment, split)
    if table.empty:
        raise ValueError(f"the {split} split of {features} is empty")
    probs, _ = classifier.predict(decode_mels(table))
    return held_out_report(table["label"].to_numpy(), probs.argmax(axis=1), table["speaker"].to_numpy())


def write_generated_features(mels: np.ndarray, labels: np.ndarray, out_dir: str | Path, source: str) -> Path:
    """Generated mels -> a features dataset (one Parquet file) in the preprocessing schema.

    Speakers are "<source>:generated", so no generated clip can land in a held-out
    speaker split; clip ids are "<source>/<emotion>_<index>".
    """
    out = Path(out_dir) / FEATURES_DIR
    out.mkdir(parents=True, exist_ok=True)
    mels = np.asarray(mels, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    emotions = [EMOTIONS[k] for k in labels]
    n = len(mels)
    table = pd.DataFrame(
        {
            "clip_id": [f"{source}/{e}_{i:05d}" for i, e in enumerate(emotions)],
            "path": [""] * n,
            "dataset": [source] * n,
            "speaker": [f"{source}:generated"] * n,
            "emotion": emotions,
            "label": labels,
            "source_sr": np.nan,
            "channels": np.nan,
            "source_s": np.nan,
            "reject_reason": [""] * n,
            "status": [STATUS_OK] * n,
            "n_mels": np.int32(mels.shape[1] if n else 0),
            "n_frames": np.int32(mels.shape[2] if n else 0),
            "mel": [m.tobytes() for m in mels],
        }
    )
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), out / "generated.parquet")
    return out
