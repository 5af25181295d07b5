"""Evaluation metrics against hand-computed and scikit-learn values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion

from emogen.evaluation.metrics import (
    classification_report,
    confusion_matrix,
    emotional_clarity,
    frechet_distance,
    inception_score,
    mean_and_spread,
)


def test_hand_computed_report():
    labels = np.array([0, 0, 0, 0, 1, 1])
    preds = np.array([0, 0, 0, 1, 1, 0])
    r = classification_report(labels, preds)
    assert r["weighted_accuracy"] == pytest.approx(4 / 6)
    assert r["unweighted_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)  # classes 2-5 absent
    f1_0 = 2 * (3 / 4) * (3 / 4) / (3 / 4 + 3 / 4)
    f1_1 = 2 * (1 / 2) * (1 / 2) / 1
    assert r["macro_f1"] == pytest.approx((f1_0 + f1_1) / 2)
    assert r["confusion"][0][:2] == [3, 1] and r["confusion"][1][:2] == [1, 1]


def test_matches_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 500)
    preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 6, 500))
    r = classification_report(labels, preds)
    assert r["weighted_accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert r["unweighted_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert r["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert np.array_equal(confusion_matrix(labels, preds), sk_confusion(labels, preds, labels=range(6)))


def test_clarity():
    assert emotional_clarity(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
    assert emotional_clarity(np.array([]), np.array([])) == 0.0


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((400, 16))
    assert frechet_distance(a, a)["fid"] == pytest.approx(0.0, abs=1e-6)
    small = frechet_distance(a, a + 0.5)["fid"]
    large = frechet_distance(a, a + 2.0)["fid"]
    assert small == pytest.approx(16 * 0.25, rel=1e-6)  # pure mean shift: |mu1 - mu2|^2
    assert large > small > 0
    b = rng.standard_normal((300, 16))
    result = frechet_distance(a, b)
    assert result["n_real"] == 400 and result["n_generated"] == 300 and result["fid"] < 1.0


def test_fid_rejects_mismatched_embeddings():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_inception_score_bounds():
    confident_diverse = np.eye(6)[np.arange(60) % 6]
    assert inception_score(confident_diverse)["is"] == pytest.approx(6.0, rel=1e-6)
    uniform = np.full((60, 6), 1 / 6)
    assert inception_score(uniform)["is"] == pytest.approx(1.0)
    collapsed = np.eye(6)[np.zeros(60, dtype=int)]
    assert inception_score(collapsed)["is"] == pytest.approx(1.0)


def test_mean_and_spread():
    assert mean_and_spread([0.5, 0.7, 0.6]) == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1), "n": 3}
    assert mean_and_spread([0.5])["std"] == 0.0


def test_per_speaker_ua_is_each_speakers_classification_report():
    from emogen.evaluation.metrics import per_speaker_ua

    labels = np.array([0, 0, 1, 1, 0, 2, 2, 2])
    preds = np.array([0, 1, 1, 1, 0, 2, 0, 0])
    speakers = np.array(["03", "03", "03", "03", "11", "11", "11", "11"])
    result = per_speaker_ua(labels, preds, speakers)
    assert list(result) == ["03", "11"]
    assert result["03"] == pytest.approx((1 / 2 + 2 / 2) / 2)  # classes 0 and 1 only
    assert result["11"] == pytest.approx((1 / 1 + 1 / 3) / 2)  # classes 0 and 2 only
    assert result["11"] == pytest.approx(balanced_accuracy_score(labels[4:], preds[4:]))


def test_clarity_per_emotion_leaves_out_emotions_without_clips():
    from emogen.evaluation.metrics import clarity_per_emotion

    requested = np.array([0, 0, 2, 2, 2])
    predicted = np.array([0, 1, 2, 2, 0])
    assert clarity_per_emotion(requested, predicted) == {"anger": 0.5, "happiness": pytest.approx(2 / 3)}


def test_silent_frame_fraction_counts_frames_whose_loudest_band_is_below_the_threshold():
    from emogen.config import AudioConfig
    from emogen.evaluation.metrics import silent_frame_fraction

    cfg = AudioConfig()
    to_scaled = lambda db: (db - cfg.db_floor) * 2 / (cfg.db_ceil - cfg.db_floor) - 1  # noqa: E731
    mels = np.full((2, 8, 10), to_scaled(-70.0), np.float32)  # every frame below -60 dB
    mels[0, 3, :4] = to_scaled(-50.0)  # one loud band makes a frame not silent
    mels[1, :, 5:] = to_scaled(0.0)
    assert silent_frame_fraction(mels, cfg) == pytest.approx((6 + 5) / 20)
    assert silent_frame_fraction(np.full((1, 8, 4), to_scaled(-59.0)), cfg) == 0.0


def test_two_sample_accuracy_is_chance_for_one_distribution_and_high_for_another():
    from emogen.evaluation.metrics import two_sample_accuracy

    rng = np.random.default_rng(0)
    speechlike = lambda n: np.clip(rng.normal(0, 1, (n, 1, 1)) * np.linspace(-1, 1, 32)[None, :, None]  # noqa: E731
                                   + rng.normal(0, 0.3, (n, 32, 40)), -1, 1)
    same = two_sample_accuracy(speechlike(120), speechlike(80), seed=1)
    assert same["n_per_side"] == 80 and 0.3 <= same["accuracy"] <= 0.7
    shifted = two_sample_accuracy(speechlike(80), speechlike(80) + 0.5, seed=1)
    assert shifted["accuracy"] >= 0.95
    a, b = speechlike(50), speechlike(60)
    assert two_sample_accuracy(a, b, seed=3) == two_sample_accuracy(a, b, seed=3)  # seeded: the report is reproducible
    with pytest.raises(ValueError, match="at least 2 clips per side"):
        two_sample_accuracy(speechlike(5), speechlike(1))
