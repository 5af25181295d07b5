"""The reference an SER must beat: logistic regression on per-band mel statistics.

A probe sees what a linear model can read from a clip without learning features: each
mel band's level (mean), its spread over time (std) and how fast it changes (std of the
frame-to-frame difference). An SER that does not beat it is not a usable instrument.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def mel_statistics(mels: np.ndarray) -> np.ndarray:
    """Per-band mean, std and delta-std over time: [N, n_mels, T] -> [N, 3 * n_mels]."""
    mels = np.asarray(mels, dtype=np.float64)
    if mels.ndim != 3:
        raise ValueError(f"mels must be [N, n_mels, T], got shape {mels.shape}")
    delta = np.diff(mels, axis=-1)
    return np.concatenate([mels.mean(axis=-1), mels.std(axis=-1), delta.std(axis=-1)], axis=1).astype(np.float32)


class LinearProbe:
    """StandardScaler + class-balanced logistic regression on `mel_statistics`.

    The lbfgs solver has no randomness, so the same data gives the same model.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000) -> None:
        self.pipeline: Pipeline = make_pipeline(
            StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced")
        )

    def fit(self, mels: np.ndarray, labels: np.ndarray) -> LinearProbe:
        self.pipeline.fit(mel_statistics(mels), np.asarray(labels))
        return self

    @property
    def classes_(self) -> np.ndarray:
        return self.pipeline.classes_

    def predict_proba(self, mels: np.ndarray) -> np.ndarray:
        """[N, n_classes] probabilities, columns in the order of `classes_`."""
        return self.pipeline.predict_proba(mel_statistics(mels))

    def predict(self, mels: np.ndarray) -> np.ndarray:
        return self.pipeline.predict(mel_statistics(mels))
