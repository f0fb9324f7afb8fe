"""Pretraining alone on CK+ + RAF-DB + FER-2013 merged to 3 classes (Section 4.1.3, Table 3)."""
from mer_jax import config_defaults


def get_config():
  c = config_defaults.get_base_config()
  c.name = "pretrain_macro"
  c.data.task = "3class"
  c.data.micro = ()
  c.model.num_classes = 3
  return c
