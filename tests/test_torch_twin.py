"""The PyTorch twin used by benchmarks/train_step_bench.py is the same network as mer_jax.models.

Same parameter count (paper config and small configs), same output shape, and, with the flax weights
copied in, the same logits (inference and training-mode BatchNorm) and the same running statistics.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip(
  "torch", reason="torch is an optional benchmark dependency: .venv/bin/pip install torch==2.13.0"
)

from benchmarks import torch_twin  # noqa: E402
from mer_jax import config_defaults  # noqa: E402
from mer_jax.models import build_model, count_params, init_variables  # noqa: E402


def cfg(**kw):
  c = config_defaults.get_model_config(num_classes=3)
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def small(**kw):
  return cfg(**dict(dict(stem_features=8, growth_rate=4, block_layers=(2, 3), reduction=2), **kw))


def flax_params(c, size):
  model = build_model(c)
  shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), size, 3))
  return count_params(shapes["params"])


def test_paper_config_parameter_count_is_identical():
  twin = torch_twin.from_model_config(cfg(), image_size=112)
  assert torch_twin.count_params(twin) == flax_params(cfg(), 112) == 3_135_541
  with torch.no_grad():
    out = twin.eval()(torch.zeros(2, 3, 112, 112))
  assert tuple(out.shape) == (2, 3)
  assert twin.out_channels == 398 and twin.feature_size == 7


@pytest.mark.parametrize("attention", ["none", "channel", "spatial", "mixed"])
@pytest.mark.parametrize("placement", ["block", "layer"])
def test_small_config_parameter_counts_are_identical(attention, placement):
  c = small(attention=attention, attention_placement=placement, num_classes=5)
  twin = torch_twin.from_model_config(c, image_size=36)
  assert torch_twin.count_params(twin) == flax_params(c, 36)


@pytest.mark.parametrize("size,placement", [(32, "block"), (37, "layer")])
def test_same_logits_with_copied_weights(size, placement):
  """37 exercises the asymmetric 'SAME' paddings and the adaptive head pooling (feature map != head_pool)."""
  c = small(attention_placement=placement, head_pool=2)
  model = build_model(c)
  variables = jax.device_get(init_variables(model, jax.random.key(1), size, 3))
  # Non-trivial BatchNorm statistics, so that inference mode tests the running averages too.
  rng = np.random.default_rng(0)
  variables["batch_stats"] = jax.tree.map(
    lambda a: (rng.uniform(0.5, 1.5, a.shape) if a.ndim else a).astype(np.float32), variables["batch_stats"]
  )
  twin = torch_twin.load_flax_variables(torch_twin.from_model_config(c, image_size=size), variables)
  x = rng.uniform(0, 1, (4, size, size, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

  want = np.asarray(model.apply(variables, x, train=False))
  assert want.shape == (4, 3)
  with torch.no_grad():
    got = twin.eval()(xt).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  want_train, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
  with torch.no_grad():
    got_train = twin.train()(xt).numpy()
  np.testing.assert_allclose(got_train, np.asarray(want_train), rtol=1e-4, atol=1e-4)
  # Running averages after one training-mode pass: flax momentum 0.99 == torch momentum 0.01. The flax
  # update uses the biased batch variance, torch's the unbiased one; compare the means exactly.
  flax_mean = np.asarray(upd["batch_stats"]["backbone"]["stem"]["bn"]["mean"])
  np.testing.assert_allclose(twin.stem.bn.running_mean.numpy(), flax_mean, rtol=1e-4, atol=1e-5)


def test_twin_refuses_the_residual_backbone():
  with pytest.raises(ValueError, match="dense"):
    torch_twin.from_model_config(cfg(backbone="residual"))
