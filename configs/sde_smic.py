"""SDE on SMIC-HS: 3 classes (negative, positive, surprise), LOSO (Table 9)."""
from mer_jax import config_defaults


def get_config():
  c = config_defaults.get_base_config()
  c.name = "sde_smic"
  c.data.task = "3class"
  c.data.micro = ("smic",)
  c.data.apex = "spot"        # SMIC-HS has no apex annotation
  c.model.num_classes = 3
  return c
