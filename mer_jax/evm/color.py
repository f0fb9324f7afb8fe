"""RGB <-> YIQ (NTSC) colour conversion, as used by Eulerian Video Magnification.

All functions act on the last axis (channels) and accept any leading shape, e.g. [T, H, W, 3].
The transform has no offset, so it can be applied to frames and to frame *differences* alike.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# NTSC RGB -> YIQ matrix (rows: Y, I, Q), the one of MATLAB's rgb2ntsc.
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64)
# Exact inverse (round trip to float precision), ~[[1, .956, .621], [1, -.272, -.647], [1, -1.106, 1.703]].
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)


def rgb_to_yiq(x: jnp.ndarray) -> jnp.ndarray:
  """[..., 3] RGB -> [..., 3] YIQ."""
  return x @ jnp.asarray(RGB_TO_YIQ.T, dtype=x.dtype)


def yiq_to_rgb(x: jnp.ndarray) -> jnp.ndarray:
  """[..., 3] YIQ -> [..., 3] RGB (no clipping)."""
  return x @ jnp.asarray(YIQ_TO_RGB.T, dtype=x.dtype)
