"""The backbone's average pools (:func:`mer_jax.models.layers.avg_pool_same`) are flax's ``avg_pool`` with
'SAME' padding: values and gradients in float64, for odd and even sizes, overlapping and tiling windows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax.models.layers import avg_pool_same


@pytest.mark.parametrize("window, stride", [(3, 2), (2, 2), (3, 1), (5, 3)])
@pytest.mark.parametrize("h, w", [(56, 56), (7, 7), (6, 9), (1, 2)])
def test_avg_pool_same_is_flax_avg_pool(window, stride, h, w):
  with jax.enable_x64(True):
    rng = np.random.default_rng(h * 100 + w + window)
    x = jnp.asarray(rng.normal(size=(2, h, w, 3)) + 5.0)
    theirs = lambda x: nn.avg_pool(x, (window, window), strides=(stride, stride), padding="SAME")
    ours = lambda x: avg_pool_same(x, window, stride)
    y, back = jax.vjp(ours, x)
    y_ref, back_ref = jax.vjp(theirs, x)
    assert y.shape == y_ref.shape == (2, -(-h // stride), -(-w // stride), 3)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-13)
    cot = jnp.asarray(rng.normal(size=y.shape))
    np.testing.assert_allclose(back(cot)[0], back_ref(cot)[0], rtol=1e-13, atol=1e-13)
