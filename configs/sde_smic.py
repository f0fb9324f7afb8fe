"""SDE on SMIC-HS: 3 classes (negative, positive, surprise), LOSO (Table 9)."""

from mer_jax import config_defaults


def get_config():
  c = config_defaults.get_benchmark_config("sde_smic", task="3class", micro=("smic",), num_classes=3)
  c.data.apex = "spot"  # SMIC-HS has no apex annotation
  return c
