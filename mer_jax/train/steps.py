"""Pure training / evaluation steps.

Loss: the cross-entropy of eq. (10), ``-1/N sum_k log softmax(logits_k)[y_k]``,
optionally with per-sample weights (0 for padding) so that padded batches give
the mean over real samples only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mer_jax.train.state import TrainState


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean cross-entropy (eq. 10). logits [N, K] (at least float32: float64 logits stay float64), labels [N] int32,
  weights [N] or None."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  if weights is None:
    return jnp.mean(nll)
  weights = weights.astype(dtype)
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def train_step(state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, jax.Array]:
  """One optimiser step on a full batch.

  images [B, H, W, C] float32, labels [B] int32 -> (new state, loss []). BatchNorm
  uses (and updates running averages from) the statistics of the whole batch;
  under a data-parallel sharding XLA reduces them across devices.
  """

  def loss_fn(params):
    logits, updates = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
    )
    return cross_entropy(logits, labels), updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return state.apply_scaled_gradients(grads=grads, batch_stats=batch_stats), loss


def masked_train_step(
  state: TrainState, images: jax.Array, labels: jax.Array, active: jax.Array
) -> tuple[TrainState, jax.Array]:
  """``train_step`` that leaves the state unchanged where ``active`` is False.

  Used under ``jax.vmap`` over LOSO folds: a fold whose epoch has fewer steps
  than the longest one (or that has stopped early) skips the extra steps.
  """
  new_state, loss = train_step(state, images, labels)
  keep = lambda new, old: jnp.where(active, new, old)
  return jax.tree.map(keep, new_state, state), jnp.where(active, loss, 0.0)


def eval_step(variables: dict, images: jax.Array, apply_fn) -> jax.Array:
  """Inference logits [B, K] for images [B, H, W, C] with running BatchNorm averages."""
  return apply_fn(variables, images, train=False)
