import numpy as np
import pytest

from emogen.evaluation.probe import LinearProbe, mel_statistics


def _toy(n_per_class: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes that differ only in one band's spread over time: a mean-only model fails."""
    rng = np.random.default_rng(seed)
    mels, labels = [], []
    for label in range(3):
        x = rng.normal(0.0, 0.1, size=(n_per_class, 16, 40))
        x[:, label * 5, :] += rng.normal(0.0, 1.0, size=(n_per_class, 40))
        mels.append(x)
        labels += [label] * n_per_class
    return np.concatenate(mels), np.array(labels)


def test_mel_statistics_shape_and_values():
    mels = np.random.default_rng(0).normal(size=(4, 128, 30))
    feats = mel_statistics(mels)
    assert feats.shape == (4, 3 * 128)
    np.testing.assert_allclose(feats[:, :128], mels.mean(axis=-1), rtol=1e-5)
    np.testing.assert_allclose(feats[:, 128:256], mels.std(axis=-1), rtol=1e-5)
    np.testing.assert_allclose(feats[:, 256:], np.diff(mels, axis=-1).std(axis=-1), rtol=1e-5)
    with pytest.raises(ValueError):
        mel_statistics(mels[0])


def test_probe_learns_separable_toy_problem():
    train_x, train_y = _toy(seed=0)
    test_x, test_y = _toy(seed=1)
    probe = LinearProbe().fit(train_x, train_y)
    assert (probe.predict(test_x) == test_y).mean() >= 0.95
    proba = probe.predict_proba(test_x)
    assert proba.shape == (len(test_y), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert list(probe.classes_) == [0, 1, 2]


def test_probe_is_deterministic():
    x, y = _toy(seed=2)
    a = LinearProbe().fit(x, y).predict_proba(x)
    b = LinearProbe().fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)
