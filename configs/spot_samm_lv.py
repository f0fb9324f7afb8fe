"""LOSO spotting benchmark on SAMM Long Videos (200 fps, 30 subjects): the training-free spotter against a
fixed-window baseline, thresholds chosen on the training subjects of each fold. Give the dataset folder:
``--config.root=/data/SAMM_longvideos`` (``SAMM_LongVideos_V*_Release.xlsx`` + frame folders)."""

from mer_jax import config_defaults


def get_config():
  return config_defaults.get_spot_bench_config("samm_lv")
