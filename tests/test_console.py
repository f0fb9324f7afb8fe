"""A redirected run log (``python -m mer_jax.main ... > run.log 2>&1``, as on a cluster) is clean: no terminal
escape codes from progress bars, no TensorFlow C++ start-up notices."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  "--config.data.micro=('smic',)",
  "--config.data.macro=('ck',)",
  "--config.data.synth_subjects_per_dataset=3",
  "--config.data.synth_clips_per_subject=4",
  "--config.data.synth_macro_images=12",
  "--config.evm.enabled=False",
  "--config.image_size=16",
  "--config.model.block_layers=(1,1)",
  "--config.model.stem_features=4",
  "--config.model.growth_rate=4",
  "--config.model.head_pool=2",
  "--config.model.reduction=2",
  "--config.pretrain.epochs=1",
  "--config.pretrain.batch_size=4",
  "--config.finetune.epochs=1",
  "--config.finetune.batch_size=4",
  "--config.bootstrap_samples=10",
]
CHATTER = ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard", "This TensorFlow binary")


def test_redirected_demo_log_has_no_escape_codes_and_no_tensorflow_chatter(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "XLA_FLAGS"))}
  env["JAX_PLATFORMS"] = "cpu"
  log = tmp_path / "run.log"
  with open(log, "w") as fh:
    proc = subprocess.run(
      [sys.executable, "-m", "mer_jax.main", "--config=configs/synth_demo.py", f"--workdir={tmp_path / 'run'}", *TINY],
      stdout=fh,
      stderr=subprocess.STDOUT,
      cwd=REPO,
      env=env,
      timeout=600,
    )
  text = log.read_text()
  assert proc.returncode == 0, text[-3000:]
  assert "[main] done in" in text and "[data] building the CK+ cache" in text  # a cache was built in this run
  assert "\x1b" not in text and "\r" not in text, [ln for ln in text.splitlines() if "\x1b" in ln or "\r" in ln][:5]
  for c in CHATTER:
    assert c not in text, c
