"""Pure training / evaluation steps.

Loss: the cross-entropy of eq. (10), ``-1/N sum_k log softmax(logits_k)[y_k]``,
optionally with per-sample weights (0 for padding) so that padded batches give
the mean over real samples only.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

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


def train_step(
  state: TrainState, images: jax.Array, labels: jax.Array, axis_name: Optional[str] = None
) -> tuple[TrainState, jax.Array]:
  """One optimiser step on a full batch.

  images [B, H, W, C] float32, labels [B] int32 -> (new state, loss []). BatchNorm
  uses (and updates running averages from) the statistics of the whole batch;
  under a data-parallel sharding (GSPMD) XLA reduces them across devices.

  ``axis_name``: the step runs inside ``jax.shard_map`` over that mesh axis on one device's (equal) share of
  the batch, the state replicated. The model's BatchNorms then reduce their statistics over the axis
  (``state.apply_fn.over_batch_axis``), and the loss and gradients are averaged over it (``lax.pmean``): the
  same step as on the whole batch, up to float rounding (:func:`sharded_train_step`).
  """
  apply_fn = state.apply_fn if axis_name is None else state.apply_fn.over_batch_axis(axis_name)

  def loss_fn(params):
    logits, updates = apply_fn(
      {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
    )
    return cross_entropy(logits, labels), updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    # each device's loss is its share's mean and its gradient that loss's (BatchNorm's backward pass already
    # sums over the axis what couples the shares), so the whole batch's are their means
    grads, loss = jax.lax.pmean((grads, loss), axis_name)
  return state.apply_scaled_gradients(grads=grads, batch_stats=batch_stats), loss


def sharded_train_step(mesh: jax.sharding.Mesh) -> Callable:
  """:func:`train_step` data-parallel over ``mesh``'s (one) axis as ``jax.shard_map``: ``(state replicated,
  images and labels split along the batch) -> (state, loss)``, both replicated.

  The same function as ``train_step`` jitted with the batch sharded (GSPMD), written per device: each device
  runs the step on its share, and the collectives are the ones it names (BatchNorm's statistics and backward
  sums, the gradients' mean), where GSPMD's partitioner places its own. On a 2-core CPU this program is
  0.95x the GSPMD step's time (benchmarks/RESULTS.md log entries 25-26). Requires a model whose
  ``apply_fn`` :meth:`~mer_jax.train.state.ModelApply.splits_batch`.
  """
  (axis,) = mesh.axis_names
  return jax.shard_map(
    functools.partial(train_step, axis_name=axis),
    mesh=mesh,
    in_specs=(P(), P(axis), P(axis)),
    out_specs=(P(), P()),
    # the state's replicated outputs come out of pmean'ed values; BatchNorm's custom VJP is not typed for vma
    check_vma=False,
  )


def steps_in_one_call(step: Callable, k: int) -> Callable:
  """``k`` consecutive calls of ``step`` as one function: ``(state, images [k, B, ...], labels [k, B]) ->
  (state, losses [k])``, step ``i`` on ``images[i]`` (unrolled: XLA:CPU runs a ``lax.scan`` of the train step
  poorly, benchmarks/RESULTS.md log entry 22).

  The same optimiser steps in the same order as ``k`` calls; one call launches them together. Used by the
  training loop where a call per step costs time between steps (a multi-device CPU step: ``loop.STEPS_PER_CALL``).
  """

  def run(state, images, labels):
    losses = []
    for i in range(k):
      state, loss = step(state, images[i], labels[i])
      losses.append(loss)
    return state, jnp.stack(losses)

  return run


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
