"""mer_jax: micro-expression recognition with EVM, a dense mixed-attention network and macro-to-micro transfer."""

__version__ = "0.1.0"
