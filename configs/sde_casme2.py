"""SDE on CASME II: 5 classes (disgust, happiness, repression, surprise, others), LOSO (Table 7)."""
from mer_jax import config_defaults


def get_config():
  c = config_defaults.get_base_config()
  c.name = "sde_casme2"
  c.data.task = "5class"
  c.data.micro = ("casme2",)
  c.model.num_classes = 5
  return c
