"""experiments/evm_probe.py: the LOSO ridge read-out that compares the EVM variants' images."""

import numpy as np
from sklearn.linear_model import Ridge

from experiments import evm_probe


def test_ridge_loso_equals_the_primal_ridge_fitted_by_sklearn():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(30, 4, 4, 2))
  labels = rng.integers(0, 3, 30)
  subjects = np.repeat(np.arange(6), 5).astype(str)
  got = evm_probe.ridge_loso(images, labels, subjects, 3, ridge=0.5)
  x_all = images.reshape(30, -1)
  for s in np.unique(subjects):
    test = subjects == s
    x = x_all[~test]
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    alpha = 0.5 * np.sum(xs**2) / len(xs)
    y = np.eye(3)[labels[~test]]
    model = Ridge(alpha=alpha, fit_intercept=False).fit(xs, y - y.mean(0))
    want = model.predict((x_all[test] - mean) / std).argmax(1)
    np.testing.assert_array_equal(got[test], want)


def test_ridge_loso_reads_a_separable_signal():
  rng = np.random.default_rng(1)
  labels = np.tile(np.arange(3), 8)
  subjects = np.repeat(np.arange(8), 3).astype(str)
  images = rng.normal(scale=0.1, size=(24, 3, 3, 1))
  images[np.arange(24), labels, 0, 0] += 1.0  # one pixel per class
  assert (evm_probe.ridge_loso(images, labels, subjects, 3) == labels).all()
