"""CDE: composite-dataset evaluation (Section 4.4, Tables 5-6, 10-12).

CASME II + SAMM + SMIC-HS mapped to negative/positive/surprise, restricted to the official MEGC 2019
composite list (442 clips, 68 subjects: the set the paper's Tables 5-6 evaluate on; ``data.protocol=paper``
gives Table 2's mapping over every clip instead), LOSO over all subjects of all three sets, after pretraining
on CK+ + RAF-DB + FER-2013.
Point ``data.roots.*`` at your licensed copies.
"""

from mer_jax import config_defaults


def get_config():
  c = config_defaults.get_benchmark_config("cde", task="3class", micro=("casme2", "samm", "smic"), num_classes=3)
  c.data.protocol = "megc2019"  # the official 442-clip composite list the paper evaluates on (docs/data.md)
  return c
