"""mer_jax: micro-expression recognition with EVM, a dense mixed-attention network and macro-to-micro transfer."""

import os as _os

# TensorFlow is only a helper here (TFDS' PNG encoding while a cache is built, clu's TensorBoard event files);
# none of mer_jax's numbers run through it. Its C++ start-up notices ("oneDNN custom operations are on",
# "All log messages before absl::InitializeLog()") would otherwise land in every log, also when stdout and stderr
# are redirected on a cluster. A user's own setting of these variables wins.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
