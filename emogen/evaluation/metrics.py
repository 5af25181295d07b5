"""Evaluation metrics: SER accuracy measures, emotional clarity, FID and Inception Score.

Functions of predictions, labels, embeddings or probabilities: the SER measures come
from scikit-learn, FID and Inception Score are numpy/scipy (scikit-learn has neither).

Vocabulary (the paper's and ours, kept apart):
- weighted accuracy (WA): overall accuracy on real held-out speakers;
- unweighted accuracy (UA): mean per-class recall (robust to class imbalance);
- emotional clarity: accuracy of a real-trained SER on *generated* clips against the
  emotion they were asked for (what the paper's 94.3% measured);
- realism: how well a simple classifier tells generated mels from real ones (a classifier
  two-sample test: 0.5 = indistinguishable) and the share of near-silent frames (speech
  has pauses and silence around the utterance).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from sklearn import metrics as sk_metrics
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from emogen.config import EMOTIONS, AudioConfig


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int = len(EMOTIONS)) -> np.ndarray:
    """counts[true, predicted], every class a row and a column even when absent."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if labels.size == 0:  # scikit-learn refuses empty input
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return sk_metrics.confusion_matrix(labels, preds, labels=range(num_classes)).astype(np.int64)


def classification_report(labels: np.ndarray, preds: np.ndarray, num_classes: int = len(EMOTIONS)) -> dict:
    """WA, UA, macro F1, per-class recall and the confusion matrix.

    Classes absent from `labels` are left out of UA and macro F1 (their recall is undefined).
    """
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    classes = list(range(num_classes))
    cm = confusion_matrix(labels, preds, num_classes)
    if labels.size:
        _, recall, f1, support = sk_metrics.precision_recall_fscore_support(
            labels, preds, labels=classes, zero_division=0)
    else:
        recall = f1 = support = np.zeros(num_classes)
    present = np.asarray(support) > 0
    return {
        "weighted_accuracy": float(sk_metrics.accuracy_score(labels, preds)) if labels.size else 0.0,
        "unweighted_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "recall": {EMOTIONS[k] if num_classes == len(EMOTIONS) else str(k): float(recall[k]) for k in classes},
        "confusion": cm.tolist(),
        "count": int(labels.size),
    }


def per_speaker_ua(labels: np.ndarray, preds: np.ndarray, speakers: np.ndarray, num_classes: int = len(EMOTIONS)) -> dict[str, float]:
    """UA of each speaker's clips, over the classes that speaker has (as `classification_report`)."""
    labels, preds, speakers = np.asarray(labels), np.asarray(preds), np.asarray(speakers).astype(str)
    return {str(speaker): classification_report(labels[speakers == speaker], preds[speakers == speaker], num_classes)["unweighted_accuracy"]
            for speaker in sorted(set(speakers.tolist()))}


def emotional_clarity(requested: np.ndarray, predicted: np.ndarray) -> float:
    """Share of generated clips that a real-trained SER assigns to their requested emotion."""
    requested, predicted = np.asarray(requested), np.asarray(predicted)
    return float((requested == predicted).mean()) if requested.size else 0.0


def clarity_per_emotion(requested: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Clarity of each requested emotion that has clips (emotions without any are left out)."""
    requested, predicted = np.asarray(requested), np.asarray(predicted)
    return {emotion: float((predicted[requested == k] == k).mean())
            for k, emotion in enumerate(EMOTIONS) if (requested == k).any()}


def silent_frame_fraction(mels: np.ndarray, cfg: AudioConfig = AudioConfig()) -> float:
    """Share of frames of scaled log-mels [N, n_mels, T] whose loudest band is below
    cfg.silent_frame_db."""
    mels = np.asarray(mels, dtype=np.float32)
    threshold = (cfg.silent_frame_db - cfg.db_floor) * 2.0 / (cfg.db_ceil - cfg.db_floor) - 1.0  # in the [-1, 1] scale
    return float((mels.max(axis=1) < threshold).mean()) if mels.size else 0.0


def two_sample_accuracy(real: np.ndarray, generated: np.ndarray, pool: int = 8, folds: int = 5, seed: int = 0) -> dict:
    """Classifier two-sample test: cross-validated accuracy of a logistic regression telling
    generated mels from real ones, on mels average-pooled pool x pool (the coarse
    time-frequency layout: harmonics, syllables, pauses). Equal-size samples (the larger
    set subsampled with the seed), so chance is 0.5; 1.0 means every clip is told apart.
    Returns the accuracy and the clips per side."""
    rng = np.random.default_rng(seed)
    n = min(len(real), len(generated))
    if n < 2:
        raise ValueError(f"a two-sample test needs at least 2 clips per side, got {len(real)} real and {len(generated)} generated")
    sides = [np.asarray(x, dtype=np.float32)[np.sort(rng.permutation(len(x))[:n])] for x in (real, generated)]
    features = np.concatenate([_average_pool(x, pool) for x in sides])
    labels = np.repeat([0, 1], n)
    cv = StratifiedKFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return {"accuracy": float(cross_val_score(model, features, labels, cv=cv).mean()), "n_per_side": int(n)}


def _average_pool(mels: np.ndarray, pool: int) -> np.ndarray:
    """[N, F, T] -> [N, F // pool * T // pool], non-overlapping means (the remainder dropped)."""
    n, f, t = mels.shape
    f, t = f // pool * pool, t // pool * pool
    return mels[:, :f, :t].reshape(n, f // pool, pool, t // pool, pool).mean(axis=(2, 4)).reshape(n, -1)


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> dict:
    """Fréchet distance between Gaussian fits of two embedding sets, in float64.

    Returns the distance and both sample counts: FID is biased upward for small sets, so
    only compare values computed with similar counts.
    """
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"embeddings must be [N, D] with the same D, got {real.shape} and {fake.shape}")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("need at least 2 embeddings per set for a covariance")
    mu1, mu2 = real.mean(axis=0), fake.mean(axis=0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        # singular product (few samples): regularize as the reference implementation does
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)  # tiny imaginary parts are numerical noise
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return {"fid": max(value, 0.0), "n_real": int(len(real)), "n_generated": int(len(fake))}


def inception_score(probs: np.ndarray, splits: int = 1) -> dict:
    """exp(E_x KL(p(y|x) || p(y))) on classifier probabilities; mean and std over splits."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be [N, classes], got {probs.shape}")
    eps = 1e-12
    scores = []
    for part in np.array_split(probs, max(1, splits)):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + eps) - np.log(marginal + eps))).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return {"is": float(np.mean(scores)), "is_std": float(np.std(scores)), "n": int(len(probs))}


def mean_and_spread(values: list[float]) -> dict:
    """Mean and sample standard deviation over seeds (std 0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()) if arr.size else 0.0, "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size)}


def held_out_report(labels: np.ndarray, preds: np.ndarray, speakers: np.ndarray) -> dict:
    """`classification_report` plus "per_speaker": UA of each held-out speaker's clips."""
    return {**classification_report(labels, preds), "per_speaker": per_speaker_ua(labels, preds, speakers)}
