"""SDE on SAMM: 5 classes (anger, contempt, happiness, surprise, others), LOSO (Table 8)."""
from mer_jax import config_defaults


def get_config():
  c = config_defaults.get_base_config()
  c.name = "sde_samm"
  c.data.task = "5class"
  c.data.micro = ("samm",)
  c.model.num_classes = 5
  return c
