"""Eulerian Video Magnification (Wu et al. 2012) in pure, jittable jax.numpy.

``magnify(video[T, H, W, C], fps, *, alpha, freq_band, pyramid, levels, lambda_c, chrom_attenuation,
temporal_filter, on_empty_band, ...) -> video``; see mer_jax.evm.magnify and docs/evm.md.
"""

from mer_jax.evm.magnify import (
  STATIC_ARGNAMES,
  EVMWarning,
  empty_band_message,
  magnify,
  magnify_batch,
  magnify_from_config,
  magnify_jit,
  motion_level_alphas,
  options_from_config,
)

__all__ = [
  "EVMWarning",
  "STATIC_ARGNAMES",
  "empty_band_message",
  "magnify",
  "magnify_batch",
  "magnify_from_config",
  "magnify_jit",
  "motion_level_alphas",
  "options_from_config",
]
