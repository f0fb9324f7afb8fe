"""Pretraining alone on CK+ + RAF-DB + FER-2013 merged to 3 classes (Section 4.1.3, Table 3)."""

from mer_jax import config_defaults


def get_config():
  # No micro sets: the shared EVM reading is carried (so the evm section matches the benchmarks') but unused.
  return config_defaults.get_benchmark_config("pretrain_macro", task="3class", micro=(), num_classes=3)
