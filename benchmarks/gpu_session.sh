#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one script, sized for one 10-minute call (~7.5 min on an
# NVIDIA H200, 2026-11-28):
#   device.txt      GPU, driver, jax/flax/optax/torch versions
#   peaks.txt       measured float32/bfloat16 matmul rate and memory bandwidth, with the datasheet figures
#   evm.txt         jitted mer_jax.evm on the GPU vs OpenCV + NumPy on the host CPU (112^2 .. 640x480, batches)
#   train_step.txt  the paper network's train step: one device, what mer_jax.main runs by default (data parallel
#                   over every device, state donated), bf16, and PyTorch eager on CUDA as the baseline
#   loso.txt        a CDE-sized synthetic LOSO, paper network at 112x112: 24 folds x 20 epochs, vmapped folds vs
#                   one by one, with how far the two modes' training drifts apart epoch by epoch
#
# How to run it on a GPU machine, from the repository root (the outputs go to $OUT, default /tmp/mer_jax_gpu_out):
#   bash benchmarks/gpu_session.sh
# The machine needs CUDA builds of jax and torch and this repository's Python dependencies. Where a package
# cannot be installed from a registry there (e.g. no network), bring its wheel in .whl/ (ml-collections and clu
# are pure Python: `python3 -m pip download --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0
# clu==0.0.12`); the script installs what it finds in .whl/ into /tmp/site first. TensorFlow is not needed.
# Then copy the tables from $OUT/*.txt into the GPU section of benchmarks/RESULTS.md, naming the run by date,
# GPU model and commit.
#
# The full 68-fold LOSO with the paper's 200-epoch budget (early stopping 20) does not fit beside the rest: one
# fold-epoch took ~0.14 s one by one and a checkpoint ~0.6 s on an H200, so the sequential mode alone needs ~9 min.
# It is a call of its own (same environment as above):
#   timeout 580 python3 benchmarks/loso_bench.py --model paper --size 112 --folds 68 --epochs 200 \
#     --early-stopping 20 --checkpoint-every 10 --mode vmapped
set -uo pipefail
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
OUT=${OUT:-/tmp/mer_jax_gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
# clu's metric_writers (imported by the training loop for its progress reports) import their TensorBoard summary
# writer, which needs TensorFlow, at module level. Where TensorFlow is not installed (a CUDA image without it; its
# wheel is far too large to carry), the benchmarks write no summaries: a sitecustomize puts in that one module's
# place a SummaryWriter that raises ImportError if anything constructs it.
if ! python3 -c "import tensorflow" >/dev/null 2>&1; then
  mkdir -p /tmp/no_tf
  cat >/tmp/no_tf/sitecustomize.py <<'PY'
"""benchmarks/gpu_session.sh: TensorFlow is not installed, so clu's TensorBoard writer cannot be used here."""

import sys
import types


class SummaryWriter:
  def __init__(self, *args, **kwargs):
    raise ImportError("clu's SummaryWriter needs TensorFlow, which is not installed on this machine")


_module = types.ModuleType("clu.metric_writers.summary_writer")
_module.SummaryWriter = SummaryWriter
sys.modules[_module.__name__] = _module
PY
  export PYTHONPATH=$PYTHONPATH:/tmp/no_tf
  echo "TensorFlow not installed: clu's TensorBoard writer is replaced by one that raises (no summaries are written)"
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c \
  "import jax, flax, optax, orbax.checkpoint, torch; print('jax', jax.__version__, jax.devices()); print('flax', flax.__version__, 'optax', optax.__version__); print('torch', torch.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/device.txt"
# ceilings measured in the same call (matmul float32/bfloat16, memory bandwidth) and the datasheet figures
timeout 40 python3 benchmarks/peaks.py 2>&1 | tee "$OUT/peaks.txt"
# 1. EVM: jax on the GPU vs OpenCV + NumPy on the host's CPU (640x480: the native CASME II / SMIC-HS frame size)
#    (~65 s on an H200)
timeout 110 python3 benchmarks/evm_bench.py --repeats 5 2>&1 | tee "$OUT/evm.txt"
# 2. train step: torch eager on CUDA is the baseline (the script picks --torch-device cuda by itself);
#    'jax main' is the data-parallel step mer_jax.main runs by default. Compilation dominates on a GPU (jax 16 s,
#    bf16 43 s on an H200); the steps take milliseconds (~130 s in all)
timeout 170 python3 benchmarks/train_step_bench.py --steps 10 --repeats 3 \
  --variants "jax,jax main,jax bf16,torch eager" 2>&1 | tee "$OUT/train_step.txt"
# 3. LOSO, vmapped folds vs one by one: 24 folds x 20 epochs, no early stopping (every fold trains 20 epochs, so
#    the two modes do the same work); latest checkpoint every 10 epochs (~200 s in all on an H200)
timeout 270 python3 benchmarks/loso_bench.py --model paper --size 112 --folds 24 --epochs 20 \
  --early-stopping 0 --checkpoint-every 10 --mode both 2>&1 | tee "$OUT/loso.txt"
