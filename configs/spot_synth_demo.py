"""LOSO spotting benchmark on SynthME long videos in both layouts (what ``make spot-demo`` runs): 2 subjects x 2
videos per dataset, written into ``<workdir>/synthme`` on the first run. The numbers say nothing about real
spotting; they show the benchmark end to end."""

from mer_jax import config_defaults


def get_config():
  return config_defaults.get_spot_bench_config("both", synth=True)
