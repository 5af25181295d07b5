"""A trained SER checkpoint used for inference.

- `SERClassifier`: class probabilities and penultimate embeddings for any batch of scaled
  log-mels (FID / IS / clarity are computed on them).
- `evaluate_split`: `held_out_report` of an SER on one speaker-independent split of a
  features dataset, the same split the training jobs used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emogen.checkpoint import load_model, load_state
from emogen.config import EMOTIONS
from emogen.data.features import decode_mels, read_features
from emogen.evaluation.metrics import held_out_report
from emogen.tracking.registry import resolve_checkpoint_ref


class SERClassifier:
    """A trained ResNetSER (best validation weights) for inference."""

    def __init__(self, state: dict, device: str | torch.device = "cpu"):
        if state.get("model_name") != "ser":
            raise ValueError(f"expected a SER checkpoint, got a {state.get('model_name')!r} one")
        self.device = torch.device(device)
        self.model = load_model(state)
        self.model.to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        tracking_uri: str | None = None) -> "SERClassifier":
        """A checkpoint folder or run folder, local or on object storage (s3://...), or an MLflow
        model URI (emogen.tracking.registry.resolve_checkpoint_ref)."""
        return cls(load_state(resolve_checkpoint_ref(path, tracking_uri).state_path), device)

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


def evaluate_split(classifier: SERClassifier, features: str | Path, assignment: dict[str, str], split: str = "test") -> dict:
    """WA / UA / macro F1 / confusion and per-speaker UA of a classifier on one split of a features dataset."""
    table = split_table(features, assignment, split)
    if table.empty:
        raise ValueError(f"the {split} split of {features} is empty")
    probs, _ = classifier.predict(decode_mels(table))
    return held_out_report(table["label"].to_numpy(), probs.argmax(axis=1), table["speaker"].to_numpy())
