"""Accuracy / UF1 / UAR against scikit-learn (oracle), the MEGC 2019 pooling and the absent-class convention."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, recall_score
from sklearn.metrics import confusion_matrix as sk_confusion

from mer_jax import metrics


def _oracle(y_true, y_pred):
  return (
    accuracy_score(y_true, y_pred),
    f1_score(y_true, y_pred, average="macro", zero_division=0),
    recall_score(y_true, y_pred, average="macro", zero_division=0),
  )


@settings(max_examples=300, deadline=None)
@given(
  st.integers(1, 6).flatmap(
    lambda k: st.tuples(
      st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=60)
    )
  )
)
def test_matches_sklearn_on_random_labels(case):
  k, pairs = case
  y_true = np.array([p[0] for p in pairs])
  y_pred = np.array([p[1] for p in pairs])
  m = metrics.compute(y_true, y_pred, k)
  acc, uf1, uar = _oracle(y_true, y_pred)
  assert m["accuracy"] == pytest.approx(acc, abs=1e-12)
  assert m["uf1"] == pytest.approx(uf1, abs=1e-12)
  assert m["uar"] == pytest.approx(uar, abs=1e-12)
  np.testing.assert_array_equal(m["confusion"], sk_confusion(y_true, y_pred, labels=list(range(k))))


def test_seeded_loop_with_skewed_and_degenerate_distributions():
  rng = np.random.default_rng(1234)
  for trial in range(500):
    k = int(rng.integers(2, 6))
    n = int(rng.integers(1, 40))
    p = rng.dirichlet(np.full(k, 0.3))  # very skewed class frequencies: classes go missing
    y_true = rng.choice(k, n, p=p)
    y_pred = y_true.copy() if trial % 7 == 0 else rng.choice(k, n, p=rng.dirichlet(np.full(k, 0.3)))
    m = metrics.compute(y_true, y_pred, k)
    for got, want in zip((m["accuracy"], m["uf1"], m["uar"]), _oracle(y_true, y_pred)):
      assert got == pytest.approx(want, abs=1e-12), (trial, y_true, y_pred)


@pytest.mark.parametrize(
  "y_true,y_pred,k,expected",
  [
    ([0, 0, 0], [0, 0, 0], 3, (1.0, 1.0, 1.0)),  # one class only, all right: classes 1, 2 absent
    ([0, 0, 0], [1, 1, 1], 3, (0.0, 0.0, 0.0)),  # all wrong
    ([0, 1], [1, 0], 2, (0.0, 0.0, 0.0)),
    ([2], [2], 5, (1.0, 1.0, 1.0)),  # a single sample
    ([0, 0, 1], [0, 2, 1], 3, (2 / 3, (2 / 3 + 1 + 0) / 3, (0.5 + 1 + 0) / 3)),  # predicted-only class 2 counts
  ],
)
def test_degenerate_cases_have_no_nan(y_true, y_pred, k, expected):
  m = metrics.compute(y_true, y_pred, k)
  got = (m["accuracy"], m["uf1"], m["uar"])
  assert not any(np.isnan(got))
  assert got == pytest.approx(expected)
  assert got == pytest.approx(_oracle(y_true, y_pred))
  assert not np.any(np.isnan(m["per_class_f1"])) and not np.any(np.isnan(m["per_class_recall"]))


def test_absent_class_is_excluded_and_flagged():
  m = metrics.compute([0, 1, 1], [0, 1, 0], 3)
  assert m["active"] == [True, True, False]
  assert m["per_class_f1"][2] == 0.0 and m["per_class_recall"][2] == 0.0
  assert m["uar"] == pytest.approx((1 + 0.5) / 2)


def test_empty_input_is_zero_not_nan():
  m = metrics.compute([], [], 3)
  assert (m["accuracy"], m["uf1"], m["uar"]) == (0.0, 0.0, 0.0)


def test_loso_pooling_uses_the_accumulated_confusion_not_mean_of_folds():
  folds = [([0, 0, 0, 0], [0, 0, 0, 0]), ([1, 2], [2, 2]), ([1, 1, 2], [1, 1, 1])]
  pooled_true = np.concatenate([f[0] for f in folds])
  pooled_pred = np.concatenate([f[1] for f in folds])
  conf = metrics.accumulate([metrics.confusion_matrix(t, p, 3) for t, p in folds])
  pooled = metrics.from_confusion(conf)
  assert pooled["uf1"] == pytest.approx(f1_score(pooled_true, pooled_pred, average="macro"))
  assert pooled["uar"] == pytest.approx(recall_score(pooled_true, pooled_pred, average="macro"))
  mean_of_folds = np.mean([metrics.compute(t, p, 3)["uf1"] for t, p in folds])
  assert pooled["uf1"] != pytest.approx(mean_of_folds)  # the two conventions really differ here


def test_per_class_scores_match_sklearn():
  rng = np.random.default_rng(0)
  y_true = rng.integers(0, 4, 200)
  y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, 200))
  m = metrics.compute(y_true, y_pred, 4)
  np.testing.assert_allclose(m["per_class_f1"], f1_score(y_true, y_pred, average=None))
  np.testing.assert_allclose(m["per_class_recall"], recall_score(y_true, y_pred, average=None))
  assert m["support"] == np.bincount(y_true, minlength=4).tolist()


def test_by_source_breaks_down_the_composite():
  y_true = np.array([0, 1, 2, 0, 1, 2, 0, 0])
  y_pred = np.array([0, 1, 1, 0, 2, 2, 1, 0])
  sources = np.array(["smic", "casme2", "casme2", "samm", "samm", "smic", "casme2", "smic"])
  out = metrics.by_source(y_true, y_pred, sources, 3)
  assert list(out) == ["Mixed", "casme2", "samm", "smic"]
  assert out["Mixed"]["uf1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
  for name in ("casme2", "samm", "smic"):
    mask = sources == name
    assert out[name]["uar"] == pytest.approx(recall_score(y_true[mask], y_pred[mask], average="macro", zero_division=0))
    assert out[name]["num_samples"] == int(mask.sum())


def test_rejects_mismatched_or_out_of_range_labels():
  with pytest.raises(ValueError, match="differ in length"):
    metrics.compute([0, 1], [0], 2)
  with pytest.raises(ValueError, match="outside"):
    metrics.compute([0, 3], [0, 1], 3)


def test_stacked_confusions_score_like_each_matrix_and_sklearn():
  # metrics.scores is the one vectorised implementation (bootstrap, reports, scorer): a [B, K, K] stack gives
  # the same numbers as every matrix alone and as scikit-learn, absent classes and an empty matrix included.
  rng = np.random.default_rng(3)
  k = 4
  stack, cases = [np.zeros((k, k), np.int64)], [([], [])]
  for _ in range(40):
    n = int(rng.integers(1, 15))
    present = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
    yt, yp = rng.choice(present, n), rng.choice(present, n) if rng.random() < 0.5 else rng.integers(0, k, n)
    stack.append(metrics.confusion_matrix(yt, yp, k))
    cases.append((yt, yp))
  out = metrics.scores(np.stack(stack).reshape(41, 1, k, k))  # any leading shape
  assert out["uf1"].shape == (41, 1) and out["per_class_f1"].shape == (41, 1, k)
  for i, (c, (yt, yp)) in enumerate(zip(stack, cases)):
    single = metrics.from_confusion(c)
    assert (single["uf1"], single["uar"], single["accuracy"]) == (
      out["uf1"][i, 0],
      out["uar"][i, 0],
      out["accuracy"][i, 0],
    )
    if len(yt):
      assert (single["accuracy"], single["uf1"], single["uar"]) == pytest.approx(_oracle(yt, yp), abs=1e-12)
  batched = metrics.from_confusion(np.stack(stack))
  np.testing.assert_array_equal(batched["uar"], out["uar"][:, 0])


def test_uar_is_recall_not_precision():
  # Macro recall (7/8) and macro precision (5/6) differ here; UAR must be the recall (STSTNet's published
  # "UAR" was the macro precision).
  y_true, y_pred = [0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]
  m = metrics.compute(y_true, y_pred, 2)
  assert m["uar"] == pytest.approx((3 / 4 + 1.0) / 2)
  assert m["per_class_precision"] == pytest.approx([1.0, 2 / 3])
