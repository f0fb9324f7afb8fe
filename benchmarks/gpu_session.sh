#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one script, sized for a 10-minute call (~9.5 min):
#   device.txt      GPU, driver, jax/torch versions
#   peaks.txt       measured float32/bfloat16 matmul rate and memory bandwidth, with the datasheet figures
#   evm.txt         jitted mer_jax.evm on the GPU vs OpenCV + NumPy on the host CPU (112^2 .. 640x480, batches)
#   train_step.txt  the paper network's train step: one device, what mer_jax.main runs by default (data parallel
#                   over every device, state donated), bf16, and PyTorch eager on CUDA as the baseline
#   loso.txt        the 68-fold CDE-sized synthetic LOSO, paper network, 200-epoch budget, early stopping 20,
#                   vmapped folds vs one by one
#
# How to run it on a GPU machine, from the repository root (the outputs go to $OUT, default /tmp/mer_jax_gpu_out):
#   bash benchmarks/gpu_session.sh
# The machine needs CUDA builds of jax and torch and this repository's Python dependencies. Where a package
# cannot be installed from a registry there (e.g. no network), bring its wheel in .whl/ (ml-collections is
# pure Python: `python3 -m pip download --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0`);
# the script installs what it finds in .whl/ into /tmp/site first.
# Then copy the tables from $OUT/*.txt into the GPU section of benchmarks/RESULTS.md, naming the run by date,
# GPU model and commit.
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
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c \
  "import jax, torch; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/device.txt"
# ceilings measured in the same call (matmul float32/bfloat16, memory bandwidth) and the datasheet figures
timeout 60 python3 benchmarks/peaks.py 2>&1 | tee "$OUT/peaks.txt"
# 1. EVM: jax on the GPU vs OpenCV + NumPy on the host's CPU (640x480: the native CASME II / SMIC-HS frame size)
timeout 150 python3 benchmarks/evm_bench.py --repeats 5 2>&1 | tee "$OUT/evm.txt"
# 2. train step: torch eager on CUDA is the baseline (the script picks --torch-device cuda by itself);
#    'jax main' is the data-parallel step mer_jax.main runs by default
timeout 120 python3 benchmarks/train_step_bench.py --steps 20 --repeats 5 \
  --variants "jax,jax main,jax bf16,torch eager" 2>&1 | tee "$OUT/train_step.txt"
# 3. the full 68-fold CDE-sized LOSO, paper network, 200-epoch budget, early stopping 20; latest checkpoint
#    every 10 epochs (an orbax save costs 0.1-0.2 s of fixed work, longer than a GPU epoch of one fold)
timeout 330 python3 benchmarks/loso_bench.py --model paper --size 112 --folds 68 --epochs 200 \
  --early-stopping 20 --checkpoint-every 10 --mode both 2>&1 | tee "$OUT/loso.txt"
