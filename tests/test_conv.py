"""config.model.conv_impl='cpu' (mer_jax.models.conv): the same convolution and gradients as XLA's, arranged
differently; checked against lax and NumPy in float64, under vmap, on a data-parallel mesh, in the model."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax import config_defaults
from mer_jax.models import build_model, init_variables
from mer_jax.models import conv as mconv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DN = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, w, strides=(1, 1), padding="SAME"):
  return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)


def _cpu_conv(x, w, strides=(1, 1), padding="SAME"):
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, DN)  # what flax's nn.Conv passes
  return mconv.cpu_conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)


def _numpy_kernel_grad(x, g, kh, kw):
  """dK[a, b] = sum_{n,i,j} x[n, i+a-kh//2, j+b-kw//2, :] (x) g[n, i, j, :] (zero outside), stride 1, 'SAME'."""
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  return np.stack(
    [np.stack([np.einsum("nijc,nijf->cf", xp[:, a : a + h, b : b + w], g) for b in range(kw)]) for a in range(kh)]
  )


def _count_convs(fn, *args) -> int:
  """Convolutions in the compiled program of ``fn``."""
  return jax.jit(fn).lower(*args).compile().as_text().count(" convolution(")


# (N, H, W, C, k, F) -> convolutions left in the compiled gradient program, and how the form computes it.
# Maps of more than TAPS_POSITIONS (196) positions per image: XLA's forward and input gradient, the kernel
# gradient in bands of BAND_POSITIONS // W rows (98 positions per image). At most 196 positions: the forward
# pass is matrix products (taps); a map of one band also takes its gradients as matrix products (no
# convolution at all), a larger one keeps the input gradient and the banded kernel gradient.
CASES = {
  "28x28, 10 bands of 3 rows (the last 1)": ((2, 28, 28, 6, 5, 4), 2 + 10),
  "23x20, 6 bands of 4 rows (the last 3), 3x3": ((3, 23, 20, 5, 3, 7), 2 + 6),
  "14x14, taps forward, 2 bands of 7 rows": ((2, 14, 14, 6, 5, 4), 1 + 2),
  "7x7, taps forward and backward": ((2, 7, 7, 6, 5, 4), 0),
  "9x11, 3x3, taps forward, 2 bands of 8 rows": ((3, 11, 9, 5, 3, 7), 1 + 2),
  "5x3, 5x5 kernel larger than the map": ((2, 5, 3, 3, 5, 2), 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cpu_form_equals_xla_and_numpy_in_float64(name):
  """Forward values, input and kernel gradients of the 'cpu' form equal lax's (1e-12, float64), the kernel
  gradient also a NumPy float64 sum; and the compiled gradient holds the stated number of convolutions."""
  (n, h, w, c, k, f), convs = CASES[name]
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    x = rng.standard_normal((n, h, w, c))
    kern = rng.standard_normal((k, k, c, f))
    g = rng.standard_normal((n, h, w, f))
    outs = {}
    for impl, fn in (("xla", _lax_conv), ("cpu", _cpu_conv)):
      y, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(kern))
      outs[impl] = [np.asarray(y), *(np.asarray(t) for t in vjp(jnp.asarray(g)))]
      assert outs[impl][0].dtype == np.float64
    for ref, got, what in zip(outs["xla"], outs["cpu"], ("output", "input gradient", "kernel gradient")):
      np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max(), err_msg=what)
    np.testing.assert_allclose(outs["cpu"][2], _numpy_kernel_grad(x, g, k, k), rtol=1e-12, atol=1e-10)
    grad = jax.value_and_grad(lambda a, b: jnp.sum(jnp.sin(_cpu_conv(a, b))), argnums=(0, 1))
    assert _count_convs(grad, jnp.asarray(x), jnp.asarray(kern)) == convs
    taps = h * w <= mconv.TAPS_POSITIONS
    forward = jax.jit(_cpu_conv).lower(jnp.asarray(x), jnp.asarray(kern)).compile().as_text()
    assert (" convolution(" not in forward) == taps
    bands = -(-h // mconv.band_rows(h, w))
    assert convs == (0 if bands == 1 else 1 + bands) if taps else convs == 2 + bands


# (N, H, W, parts' channels, k, F) -> convolutions in the compiled gradient program: a dense layer's input is the
# concatenation of its block's earlier outputs, and its kernel gradient is computed part by part, in bands.
GROUPED = {
  "28x28, 3 parts, 10 bands": ((2, 28, 28, (6, 4, 4), 5, 4), 2 + 3 * 10),
  "14x14, 4 parts, taps forward, 2 bands": ((2, 14, 14, (5, 3, 3, 3), 5, 4), 1 + 4 * 2),
  "7x7, 2 parts, taps throughout (one band: no parts)": ((2, 7, 7, (6, 4), 5, 4), 0),
}


@pytest.mark.parametrize("name", list(GROUPED))
def test_kernel_gradient_part_by_part_equals_the_whole_in_float64(name):
  """With ``input_groups`` (the channel counts of the parts a dense layer's input was concatenated from) the
  'cpu' form computes the same output and gradients as lax (1e-12, float64; the kernel gradient also against
  NumPy), and its compiled gradient computes the kernel gradient per part and band (the convolution count)."""
  (n, h, w, groups, k, f), convs = GROUPED[name]
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    parts = [jnp.asarray(rng.standard_normal((n, h, w, c))) for c in groups]
    kern = jnp.asarray(rng.standard_normal((k, k, sum(groups), f)))
    g = jnp.asarray(rng.standard_normal((n, h, w, f)))

    def grouped(ps, b):  # as DenseBackbone calls it: the concatenation, told its parts
      x = jnp.concatenate(ps, -1)
      dn = jax.lax.conv_dimension_numbers(x.shape, b.shape, DN)
      return mconv.cpu_conv_general_dilated(x, b, (1, 1), "SAME", dimension_numbers=dn, input_groups=groups)

    outs = {}
    for impl, fn in (("xla", lambda ps, b: _lax_conv(jnp.concatenate(ps, -1), b)), ("grouped", grouped)):
      y, vjp = jax.vjp(fn, parts, kern)
      dps, dk = vjp(g)
      outs[impl] = [np.asarray(y), np.concatenate([np.asarray(d) for d in dps], -1), np.asarray(dk)]
    for ref, got, what in zip(outs["xla"], outs["grouped"], ("output", "input gradient", "kernel gradient")):
      np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max(), err_msg=what)
    x = np.concatenate([np.asarray(p) for p in parts], -1)
    np.testing.assert_allclose(outs["grouped"][2], _numpy_kernel_grad(x, np.asarray(g), k, k), rtol=1e-12, atol=1e-10)
    grad = jax.grad(lambda ps, b: jnp.sum(jnp.sin(grouped(ps, b))), argnums=(0, 1))
    assert _count_convs(grad, parts, kern) == convs


def test_input_groups_must_split_the_channels():
  x = jnp.zeros((1, 4, 4, 6))
  assert [p.shape[-1] for p in mconv.split_input_groups(x, (2, 4))] == [2, 4]
  assert len(mconv.split_input_groups(x, ())) == 1
  with pytest.raises(ValueError, match=r"input_groups \(2, 3\) do not split 6 channels"):
    mconv.split_input_groups(x, (2, 3))


def _numpy_tap_sum(z, kh, kw):
  """out[n, i, j] = sum_{a, b} z[n, i + a - kh//2, j + b - kw//2, (a, b)] (zero outside), by loops."""
  n, h, w, t = z.shape
  f = t // (kh * kw)
  out = np.zeros((n, h, w, f))
  for i in range(h):
    for j in range(w):
      for a in range(kh):
        for b in range(kw):
          p, q = i + a - kh // 2, j + b - kw // 2
          if 0 <= p < h and 0 <= q < w:
            out[:, i, j] += z[:, p, q, (a * kw + b) * f : (a * kw + b + 1) * f]
  return out


def test_tap_sum_and_tap_shifts_are_each_others_transpose():
  """shifted_tap_sum matches a loop over positions and taps; tap_shifts is its exact transpose (the backward
  pass of the taps form relies on it), for a non-square map and kernel."""
  rng = np.random.default_rng(4)
  kh, kw, f = 5, 3, 2
  with jax.enable_x64(True):
    z = rng.standard_normal((2, 6, 4, kh * kw * f))
    np.testing.assert_allclose(mconv.shifted_tap_sum(jnp.asarray(z), kh, kw), _numpy_tap_sum(z, kh, kw), atol=1e-12)
    g = jnp.asarray(rng.standard_normal((2, 6, 4, f)))
    (transposed,) = jax.linear_transpose(lambda v: mconv.shifted_tap_sum(v, kh, kw), jnp.asarray(z))(g)
    np.testing.assert_allclose(mconv.tap_shifts(g, kh, kw), transposed, atol=1e-12)
    kern = rng.standard_normal((kh, kw, 3, f))
    cols = np.asarray(mconv.taps_kernel(jnp.asarray(kern)))
    for a, b, c in ((0, 0, 0), (4, 2, 1), (2, 1, 2)):
      np.testing.assert_array_equal(cols[c, (a * kw + b) * f : (a * kw + b + 1) * f], kern[a, b, c])


def test_1x1_convolutions_are_matrix_products():
  """A 1x1 convolution (channels 6 -> 5) in the 'cpu' form has no convolution at all, and equals lax's."""
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    x, kern = jnp.asarray(rng.standard_normal((2, 9, 11, 6))), jnp.asarray(rng.standard_normal((1, 1, 6, 5)))
    loss = lambda fn: lambda a, b: jnp.sum(jnp.sin(fn(a, b)))
    for argnum in (0, 1):
      ref = jax.grad(loss(_lax_conv), argnum)(x, kern)
      np.testing.assert_allclose(jax.grad(loss(_cpu_conv), argnum)(x, kern), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_cpu_conv(x, kern), _lax_conv(x, kern), rtol=1e-12, atol=1e-12)
    assert _count_convs(jax.grad(loss(_cpu_conv), argnums=(0, 1)), x, kern) == 0
    assert "dot_general" in str(jax.make_jaxpr(_cpu_conv)(x, kern))


def test_other_convolutions_are_left_to_lax():
  """Stride 2 (the stem), 'VALID' padding and even kernels are lax.conv_general_dilated, unchanged."""
  x = jnp.ones((2, 28, 28, 3))
  for kern, strides, padding in (
    (jnp.ones((5, 5, 3, 4)), (2, 2), "SAME"),
    (jnp.ones((5, 5, 3, 4)), (1, 1), "VALID"),
    (jnp.ones((4, 4, 3, 4)), (1, 1), "SAME"),
  ):
    got = jax.make_jaxpr(lambda a, b, s=strides, p=padding: _cpu_conv(a, b, s, p))(x, kern)
    ref = jax.make_jaxpr(lambda a, b, s=strides, p=padding: _lax_conv(a, b, s, p))(x, kern)
    assert str(got) == str(ref)


@pytest.mark.parametrize("size", [28, 14, 7])
def test_vmapped_over_folds_equals_each_fold(size):
  """Under jax.vmap (fit_many's folds: per-fold kernels) the 'cpu' form's gradients equal each fold's alone, at
  the sizes of the three forms (bands; taps forward; taps throughout)."""
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((3, 2, size, size, 4)))
    kern = jnp.asarray(rng.standard_normal((3, 5, 5, 4, 6)))
    grad = jax.grad(lambda a, b: jnp.sum(jnp.tanh(_cpu_conv(a, b))), argnums=(0, 1))
    batched = jax.vmap(grad)(x, kern)
    for f in range(3):
      ref = jax.grad(lambda a, b: jnp.sum(jnp.tanh(_lax_conv(a, b))), argnums=(0, 1))(x[f], kern[f])
      for got, want in zip(batched, ref):
        np.testing.assert_allclose(got[f], want, rtol=1e-12, atol=1e-12)


def test_auto_is_cpu_on_a_cpu_backend_only():
  assert mconv.resolve_conv_impl("auto", "cpu") == "cpu"
  assert mconv.resolve_conv_impl("auto", "gpu") == "xla"
  assert mconv.resolve_conv_impl("auto", "tpu") == "xla"
  assert mconv.resolve_conv_impl("xla", "cpu") == "xla"
  assert mconv.resolve_conv_impl("cpu", "gpu") == "cpu"
  assert config_defaults.get_model_config().conv_impl == "auto"


def test_model_in_either_form_has_the_same_parameters_and_outputs():
  """conv_impl changes no parameter (checkpoints load either way) and, in float32, no logit beyond rounding."""
  cfg = config_defaults.get_model_config(num_classes=3)
  cfg.block_layers = (2, 2, 2)
  models = {}
  for impl in ("xla", "cpu"):
    cfg.conv_impl = impl
    models[impl] = build_model(cfg)
  assert models["cpu"].backbone.conv_impl == "cpu" and models["xla"].backbone.conv_impl == "xla"
  v = init_variables(models["xla"], jax.random.key(0), 112)
  shapes = jax.eval_shape(lambda: init_variables(models["cpu"], jax.random.key(0), 112))
  assert jax.tree.structure(shapes) == jax.tree.structure(v)
  assert [a.shape for a in jax.tree.leaves(shapes)] == [a.shape for a in jax.tree.leaves(v)]
  x = jnp.asarray(np.random.default_rng(3).uniform(size=(4, 112, 112, 3)), jnp.float32)
  logits = {impl: m.apply(v, x, train=True, mutable=["batch_stats"])[0] for impl, m in models.items()}
  np.testing.assert_allclose(logits["cpu"], logits["xla"], rtol=1e-4, atol=1e-4)
  # The 'cpu' model runs its two 1x1 transitions and the dense layers of its 14x14 and 7x7 blocks (2 + 2) as
  # matrix products: 6 convolutions fewer in its forward pass.
  convs = {
    impl: str(jax.make_jaxpr(lambda v, m=m: m.apply(v, x, train=False))(v)).count("conv_general_dilated[")
    for impl, m in models.items()
  }
  assert convs["xla"] - convs["cpu"] == 6, convs


_MESH_SCRIPT = r"""
import json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from mer_jax.models import conv as mconv
DN = ("NHWC", "HWIO", "NHWC")
mesh = jax.make_mesh((2,), ("data",))
k = jax.device_put(np.ones((5, 5, 6, 4), np.float32), NamedSharding(mesh, P()))
out = {}
convs = {"xla": lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=DN),
         "cpu": lambda a, b: mconv.cpu_conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=DN)}
for size in (28, 14, 7):
 for impl, conv in convs.items():
  x = jax.device_put(np.ones((8, size, size, 6), np.float32), NamedSharding(mesh, P("data")))
  step = jax.jit(jax.grad(lambda a, b: jnp.sum(conv(a, b) ** 2), argnums=1), out_shardings=NamedSharding(mesh, P()))
  text = step.lower(x, k).compile().as_text()
  out[f"{impl} {size}"] = {op: text.count(" " + op + "(") + text.count(" " + op + "-start(")
                           for op in ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")}
print("RESULT" + json.dumps(out))
"""


def test_bands_and_taps_split_rows_not_the_sharded_batch():
  """On a 2-device data-parallel mesh (batch sharded) the 'cpu' form adds no communication at any of its map
  sizes (bands at 28x28, taps forward at 14x14, taps throughout at 7x7): the same collectives as XLA's (one
  all-reduce of the kernel gradient). Bands or matrix products over the batch would move images between
  devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  for size in (28, 14, 7):
    assert out[f"xla {size}"]["all-reduce"] >= 1, out
    assert out[f"cpu {size}"] == out[f"xla {size}"], (size, out)


def test_taps_keep_the_dtype_and_accumulate_like_a_convolution():
  """In bfloat16 the taps form returns bfloat16 values and gradients (as lax does) accumulated in float32 and
  rounded once: as close to the float32 convolution as lax's bfloat16 output (one bfloat16 rounding, 2^-9)."""
  rng = np.random.default_rng(5)
  x32 = jnp.asarray(rng.standard_normal((4, 7, 7, 64)), jnp.float32)
  k32 = jnp.asarray(rng.standard_normal((5, 5, 64, 24)) * 0.05, jnp.float32)
  g32 = jnp.asarray(rng.standard_normal((4, 7, 7, 24)), jnp.float32)
  x, k, g = (a.astype(jnp.bfloat16) for a in (x32, k32, g32))
  y, vjp = jax.vjp(mconv.conv_taps, x, k)
  got = [y, *vjp(g)]
  assert [a.dtype for a in got] == [jnp.bfloat16] * 3
  # the float32 convolution of the same bfloat16-rounded inputs
  y32, vjp32 = jax.vjp(_lax_conv, x.astype(jnp.float32), k.astype(jnp.float32))
  for a, r, what in zip(got, [y32, *vjp32(g.astype(jnp.float32))], ("output", "input gradient", "kernel gradient")):
    err = float(jnp.max(jnp.abs(a.astype(jnp.float32) - r) / (jnp.abs(r) + 1e-3 * jnp.max(jnp.abs(r)))))
    assert err <= 2.0**-8, (what, err)
