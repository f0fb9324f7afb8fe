"""The shared configuration schema: every field any part of mer_jax reads.

Benchmark configs in ``configs/`` start from :func:`get_benchmark_config` (the base plus what every
benchmark shares, e.g. the EVM reading :data:`BENCHMARK_EVM_READING`) and change only what differs
(datasets, task, class count, training sizes). Every field is
overridable from the command line (``--config.model.attention=channel``);
:mod:`mer_jax.configuration` checks every override's key and type before the config is
loaded and :func:`mer_jax.configuration.validate` every value once at start-up.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections


def get_model_config(num_classes: int = 3) -> ml_collections.ConfigDict:
  """The paper's network (Sections 3.3-3.4) at the sizes documented in
  :mod:`mer_jax.models.backbones` (3.14M parameters at 112x112x3, 3 classes)."""
  m = ml_collections.ConfigDict()
  m.num_classes = num_classes
  m.backbone = "dense"  # dense | residual   (Table 12)
  m.attention = "mixed"  # none | channel | spatial | mixed   (Table 11)
  m.attention_placement = "block"  # block: on each dense block's skip-path output; layer: on every layer's new maps
  m.stem_features = 32  # 5x5/2 stem conv width
  m.growth_rate = 24  # k: feature maps each dense layer adds
  m.block_layers = (5, 10, 10)  # dense layers per block
  m.compression = 0.5  # transition keeps this fraction of channels
  m.kernel_size = 5  # every backbone conv is 5x5 (Section 3.3.1)
  m.reduction = 8  # r of the channel-attention MLP, eq. (5)
  m.attention_kernel = 5  # spatial-attention conv, eq. (7)
  m.leaky_slope = 0.01  # LeakyReLU slope inside the channel MLP (flax's default; not in the paper:
  # README "Choices not in the paper")
  m.head_pool = 7  # adaptive average pooling to head_pool x head_pool (Section 3.4)
  m.residual_bottleneck = 81  # residual variant: 1x1 -> 5x5 -> 1x1 bottleneck width (3.09M params)
  m.bn_momentum = 0.99  # Keras BatchNormalization defaults
  m.bn_epsilon = 1e-3
  m.dtype = "float32"  # compute dtype: float32 | bfloat16 (params float32) | float64 (needs JAX x64)
  m.conv_impl = "auto"  # auto | xla | cpu: how the convolutions are arranged for XLA (same function and
  # gradients; mer_jax.models.conv): auto = cpu (1x1 as matmuls, kernel gradients in row bands) on a CPU
  # backend, xla (flax's nn.Conv as it is) elsewhere
  return m


def get_evm_config() -> ml_collections.ConfigDict:
  """Eulerian Video Magnification settings (Section 3.2, 4.1.2)."""
  e = ml_collections.ConfigDict()
  e.enabled = True
  e.order = "paper"  # paper: magnify at native size, then apex, resize | fast: resize first (approx.)
  e.alpha = 15.0
  e.freq_band = (0.1, 0.4)  # the paper's "0.1-0.4": Hz (band_units="hz") or per-frame rates (r2, r1)
  # (band_units="mit_rates"); see EVM_READINGS and docs/evm.md
  e.pyramid = "laplacian"  # laplacian (motion) | gaussian (colour)
  e.levels = "auto"
  e.lambda_c = 16.0
  e.chrom_attenuation = 0.1
  e.temporal_filter = "ideal"  # ideal | butterworth | iir
  e.band_units = "hz"  # hz: freq_band in Hz | mit_rates: per-frame rates (r2, r1) of the MIT IIR
  e.on_empty_band = "error"  # error | fallback (see mer_jax.evm: documented fallback)
  return e


# The two readings of the paper's EVM band "0.1-0.4" (docs/evm.md; compared by experiments/evm_ablation.py),
# as overrides of the ``evm`` section.
#   hz:        a band in Hz. The ideal (FFT) filter has no frequency bin in that band for a sub-second clip
#              (mer_jax.evm raises), so the first-order Butterworth band-pass on the same band runs instead,
#              started at the onset frame: the onset-referenced amplifier documented in README "EVM".
#   mit_rates: the per-frame low-pass rates (r2, r1) of the MIT reference code's two-rate IIR filter.
EVM_READINGS: dict[str, dict[str, str]] = {
  "hz": {"band_units": "hz", "temporal_filter": "butterworth"},
  "mit_rates": {"band_units": "mit_rates", "temporal_filter": "iir"},
}
# The reading every benchmark config (configs/*.py) uses. "mit_rates", chosen from the paper's text and the
# SynthME ablation (README "Preprocessing and EVM", docs/evm.md "Which reading?"): the Hz reading cannot be
# realised in a sub-second clip and, as an onset-referenced amplifier, magnifies the apex only 1.9-3.4 times
# where the paper describes alpha 15 making apex frames look like macro-expressions.
BENCHMARK_EVM_READING = "mit_rates"


def get_train_config(batch_size: int, epochs: int) -> ml_collections.ConfigDict:
  """Optimiser / schedule settings shared by pretraining (Table 3) and fine-tuning (Table 4)."""
  t = ml_collections.ConfigDict()
  t.batch_size = batch_size
  t.epochs = epochs
  t.learning_rate = 0.01
  t.optimizer = "adam"
  t.plateau_factor = 0.1
  t.plateau_patience = 20
  t.early_stopping_patience = 20
  t.val_fraction = 0.2
  t.balanced_sampling = True
  t.augment = False
  return t


def get_base_config() -> ml_collections.ConfigDict:
  """Every field with its default (the paper's settings where it gives them).

  Returns:
    A ConfigDict with the top-level fields and the ``model``, ``evm``, ``data``, ``pretrain`` and
    ``finetune`` sections; :func:`mer_jax.configuration.validate` lists the allowed values.
  """
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.seed = 0
  c.image_size = 112  # apex frames are resized to image_size x image_size
  c.channels = 3  # grey sets (SAMM, FER-2013) are replicated to 3 channels
  c.model = get_model_config()
  c.evm = get_evm_config()

  d = ml_collections.ConfigDict()
  d.task = "3class"  # 3class | 5class
  d.protocol = "paper"  # paper (Table 2) | megc2019
  d.micro = ("casme2", "samm", "smic")  # datasets fine-tuned / tested with LOSO
  d.macro = ("ck", "rafdb", "fer2013")  # datasets used for pretraining
  d.roots = ml_collections.ConfigDict(
    {
      "casme2": "",
      "samm": "",
      "smic": "",
      "ck": "",
      "rafdb": "",
      "fer2013": "",
    }
  )
  d.cache_dir = ""  # TFDS data_dir; empty -> <workdir>/tfds
  d.synthetic = False  # True: generate SynthME into <workdir>/synthme if the roots are empty
  d.synth_subjects_per_dataset = 0  # SynthME size knobs (0 = generator default)
  d.synth_clips_per_subject = 0
  d.synth_macro_images = 0
  d.face_crop = True
  d.face_margin = 0.1  # face box grown by this fraction on each side (mer_jax.data.face)
  d.on_no_face = "fallback"  # fallback (centre square, with a warning) | error
  d.apex = "annotated"  # annotated | spot | middle (SMIC-HS has no annotation: spot)
  d.skip_bad_samples = False  # True: count and report unreadable samples instead of failing
  c.data = d

  c.pretrain = get_train_config(batch_size=16, epochs=200)
  c.pretrain.enabled = True
  c.pretrain.task = "3class"  # macro sets map to negative/positive/surprise only (Table 2), also for SDE 5-class
  c.finetune = get_train_config(batch_size=32, epochs=200)
  c.finetune.test_fold_early_stopping = False  # True reproduces test-fold model selection (labelled in reports)
  c.finetune.select_best = True  # False: keep the last epoch's weights (no selection, no early stop)
  c.finetune.parallel_folds = 0  # >0: train this many LOSO folds as one vmapped program
  c.pretrained_checkpoint = ""  # optional path to reuse a pretraining run

  c.cpu_devices = 0  # CPU backend: split the host's cores into this many data-parallel XLA devices
  # (0 = automatic, 1 = one device; mer_jax.train.parallel.use_host_cores)
  c.cpu_fast_conv = "auto"  # CPU backend: training steps without XLA:CPU's YNNPACK fusions: auto (when the devices
  # are fewer than the cores and the steps are fold-vmapped or model.conv_impl='xla') | on | off
  # (mer_jax.train.parallel.fast_conv_applies)
  c.host_malloc = "system"  # system | reuse: keep freed memory for reuse (glibc: one arena, no mmap) instead of
  # mapping XLA:CPU's per-step scratch buffers afresh; faster for large steps, slower for small ones
  # (mer_jax.train.host_memory)
  c.log_every_steps = 50
  c.checkpoint_every_epochs = 1
  c.checkpoint_async = True  # write checkpoints in the background (single-process runs; see train/checkpoint.py)
  c.bootstrap_samples = 1000
  return c


def get_benchmark_config(name: str, *, task: str, micro: Sequence[str], num_classes: int) -> ml_collections.ConfigDict:
  """The base config plus what every benchmark in ``configs/`` shares.

  Shared today: the EVM reading :data:`BENCHMARK_EVM_READING` (see :data:`EVM_READINGS`); macro
  pretraining, model and training sizes stay the base's.

  Args:
    name: the run's name (``config.name``), by convention the config file's stem.
    task: ``data.task``, "3class" or "5class".
    micro: ``data.micro``, the micro-expression sets fine-tuned and tested with LOSO (empty: pretraining only).
    num_classes: ``model.num_classes``; must equal the class count of ``task``.

  Returns:
    A new ConfigDict with the same keys as :func:`get_base_config`.
  """
  c = get_base_config()
  c.name = name
  c.data.task = task
  c.data.micro = tuple(micro)
  c.model.num_classes = num_classes
  c.evm.update(EVM_READINGS[BENCHMARK_EVM_READING])
  return c


SPOT_DATASETS = ("cas_long", "samm_lv", "both")


def get_spot_bench_config(dataset: str, *, synth: bool = False) -> ml_collections.ConfigDict:
  """The LOSO spotting benchmark (``python -m mer_jax.spot_bench --config=configs/spot_*.py``).

  Args:
    dataset: ``'cas_long'`` (CAS(ME)^2 long videos), ``'samm_lv'`` (SAMM Long Videos) or ``'both'``.
    synth: run on SynthME long videos written into ``<workdir>/synthme`` instead of ``root``.

  Returns:
    ConfigDict: ``dataset``; ``root`` (the dataset folder as released: annotation file + frames; for ``both`` a
    folder holding ``cas_long/`` and ``samm_lv/``); ``rule`` (counting rule for selection and tables:
    ``megc2020`` | ``one-to-one``); ``synth`` (``enabled``, ``subjects``, ``videos_per_subject``, ``seconds``
    (0: 20 s CAS(ME)^2, 12 s SAMM-LV), ``seed``); ``spotter`` (the fixed spotter settings,
    :class:`mer_jax.spotting.spotter.SpotParams`; those named in ``grid`` are chosen per fold); ``grid.micro``
    and ``grid.macro`` (candidate values searched on the training subjects, in two stages: micro F1, then
    macro F1; :mod:`mer_jax.spotting.loso`); ``baseline_counts`` (the baseline's candidate windows per video
    and type).
  """
  from mer_jax.spotting import loso  # cv2 and the spotter: imported only when a spotting config is built
  from mer_jax.spotting.spotter import SpotParams

  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.root = ""
  c.rule = "megc2020"
  c.synth = ml_collections.ConfigDict(
    {"enabled": synth, "subjects": 2, "videos_per_subject": 2, "seconds": 0.0, "seed": 0}
  )
  spot = SpotParams().as_dict()
  spot["eye_band"] = tuple(spot["eye_band"])
  c.spotter = ml_collections.ConfigDict(spot)
  c.grid = ml_collections.ConfigDict(
    {
      "micro": {k: tuple(v) for k, v in loso.MICRO_GRID.items()},
      "macro": {k: tuple(v) for k, v in loso.MACRO_GRID.items()},
    }
  )
  c.baseline_counts = tuple(loso.BASELINE_COUNTS)
  return c
