"""SDE on SAMM: 5 classes (anger, contempt, happiness, surprise, others), LOSO (Table 8)."""

from mer_jax import config_defaults


def get_config():
  return config_defaults.get_benchmark_config("sde_samm", task="5class", micro=("samm",), num_classes=5)
