"""Train state: parameters, BatchNorm statistics, optimiser and plateau state.

The learning rate schedule is Keras' ``ReduceLROnPlateau`` (Tables 3-4: lr 0.01,
x0.1 after ``plateau_patience`` epochs without improvement of the validation
loss), implemented with ``optax.contrib.reduce_on_plateau``. Its state
(``plateau``) is advanced once per epoch with the validation loss
(:func:`plateau_step`); every optimiser step multiplies the Adam update by
``plateau.scale``. Adam's update is linear in the learning rate, so this equals
Adam with learning rate ``lr * scale``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """flax TrainState plus ``batch_stats``, ``epoch`` and the plateau state.

  ``apply_fn`` is the model's ``apply``; ``tx`` is Adam; ``plateau_tx`` the
  ``reduce_on_plateau`` transformation (both static, not part of the pytree).
  """

  batch_stats: Any = None
  epoch: jax.Array = None
  plateau: Any = None
  plateau_tx: optax.GradientTransformationExtraArgs = flax.struct.field(pytree_node=False, default=None)

  def apply_scaled_gradients(self, *, grads, batch_stats) -> "TrainState":
    """One Adam step with the learning rate scaled by the plateau state."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    updates = jax.tree.map(lambda u: u * self.plateau.scale.astype(u.dtype), updates)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats)


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Any]:
  """(Adam, reduce_on_plateau) from a ``config.pretrain`` / ``config.finetune`` section.

  The transformations are cached by their settings: they are static parts of
  the TrainState pytree, so equal objects let successive folds reuse one compilation. The settings are
  checked for users by :func:`mer_jax.configuration.validate` at start-up.
  """
  assert train_cfg.optimizer == "adam" and train_cfg.learning_rate > 0 and 0 < train_cfg.plateau_factor <= 1, (
    train_cfg.optimizer,
    train_cfg.learning_rate,
    train_cfg.plateau_factor,
  )
  return _optimizer(float(train_cfg.learning_rate), float(train_cfg.plateau_factor), int(train_cfg.plateau_patience))


@functools.lru_cache(maxsize=None)
def _optimizer(learning_rate: float, factor: float, patience: int):
  tx = optax.adam(learning_rate)
  plateau_tx = optax.contrib.reduce_on_plateau(factor=factor, patience=patience)
  return tx, plateau_tx


def create_state(apply_fn: Callable, variables: dict, train_cfg: ml_collections.ConfigDict) -> TrainState:
  """A fresh train state (step 0, epoch 0) around ``variables`` ``{'params','batch_stats'}``."""
  tx, plateau_tx = make_optimizer(train_cfg)
  params = variables["params"]
  return TrainState(
    step=jnp.asarray(0, jnp.int32),
    apply_fn=apply_fn,
    params=params,
    tx=tx,
    opt_state=tx.init(params),
    batch_stats=variables.get("batch_stats", {}),
    epoch=jnp.asarray(0, jnp.int32),
    plateau=plateau_tx.init(params),
    plateau_tx=plateau_tx,
  )


def plateau_step(state: TrainState, val_loss: jax.Array) -> TrainState:
  """Advances the plateau state by one epoch with the validation loss (lower is better)."""
  _, plateau = state.plateau_tx.update(updates={}, state=state.plateau, value=val_loss)
  return state.replace(plateau=plateau, epoch=state.epoch + 1)


@dataclasses.dataclass(frozen=True)
class ModelApply:
  """``model.apply`` compared by value: models built from equal configs are equal, so the
  train state treedefs match and jitted steps compile once per process (a bound method
  ``model.apply`` compares by object identity and would recompile for every model instance)."""

  model: Any

  def __call__(self, *args, **kwargs):
    return self.model.apply(*args, **kwargs)

  def splits_batch(self) -> bool:
    """Whether :meth:`over_batch_axis` applies: the model's backbone has a ``bn_axis_name`` field
    (:class:`mer_jax.models.MERNet`'s backbones)."""
    return hasattr(getattr(self.model, "backbone", None), "bn_axis_name")

  def over_batch_axis(self, axis_name: str) -> "ModelApply":
    """The same model for one device's share of the batch inside ``shard_map`` over ``axis_name``: its
    BatchNorms reduce their statistics over the axis, so they are the whole batch's (same parameters, same
    variables; :func:`mer_jax.train.steps.train_step`)."""
    backbone = self.model.backbone.clone(bn_axis_name=axis_name)
    return ModelApply(self.model.clone(backbone=backbone))


def model_apply(model) -> ModelApply:
  return ModelApply(model)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def jit_init(model, rng: jax.Array, image_size: int, channels: int) -> dict:
  """Initial variables of ``model`` for inputs ``[N, image_size, image_size, channels]``, jitted.

  Compiled once per model config and input shape (models are compared by value).

  Args:
    model: a :class:`mer_jax.models.MERNet` (static).
    rng: PRNG key.
    image_size: input height = width (static).
    channels: input channels (static).

  Returns:
    ``{'params', 'batch_stats'}``.
  """
  from mer_jax.models import init_variables

  return init_variables(model, rng, image_size, channels)


def variables_of(state: TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}
