"""SDE on CASME II: 5 classes (disgust, happiness, repression, surprise, others), LOSO (Table 7)."""

from mer_jax import config_defaults


def get_config():
  return config_defaults.get_benchmark_config("sde_casme2", task="5class", micro=("casme2",), num_classes=5)
