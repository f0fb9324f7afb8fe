"""LOSO spotting benchmark on CAS(ME)^2 long videos (30 fps, 22 subjects): the training-free spotter against a
fixed-window baseline, thresholds chosen on the training subjects of each fold. Give the dataset folder:
``--config.root=/data/CASME2_long`` (``CAS(ME)^2code_final.xlsx`` + ``rawpic/``)."""

from mer_jax import config_defaults


def get_config():
  return config_defaults.get_spot_bench_config("cas_long")
