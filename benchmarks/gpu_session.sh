#!/usr/bin/env bash
# Issue 6's GPU measurements as ONE call of the device tool (budget: ~9.5 min of a 10-min call; a task that is
# lent a device gets 15 device-minutes in all, start-up included). Not run yet: no session so far was lent one.
#
# Before the call, in the repo root of a session with a device (ml-collections is the one package of ours
# the device image lacks; jax/flax/optax/orbax/opencv/torch with CUDA are there):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl ml-collections==1.1.0
# The call:  run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
# Then copy the tables from $OUT/*.txt into benchmarks/RESULTS.md (GPU section) with the date and device.
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
# 1. EVM: jax on the GPU vs OpenCV + NumPy on the host's CPU (640x480 is the row the issue asks for)
timeout 150 python3 benchmarks/evm_bench.py --repeats 5 2>&1 | tee "$OUT/evm.txt"
# 2. train step: torch eager on CUDA is the baseline (the script picks --torch-device cuda by itself)
timeout 120 python3 benchmarks/train_step_bench.py --steps 20 --repeats 5 \
  --variants "jax,jax+donate,jax bf16,torch eager" 2>&1 | tee "$OUT/train_step.txt"
# 3. the full 68-fold CDE-sized LOSO, paper network, 200-epoch budget, early stopping 20; latest checkpoint
#    every 10 epochs (an orbax save costs 0.1-0.2 s of fixed work, longer than a GPU epoch of one fold)
timeout 330 python3 benchmarks/loso_bench.py --model paper --size 112 --folds 68 --epochs 200 \
  --early-stopping 20 --checkpoint-every 10 --mode both 2>&1 | tee "$OUT/loso.txt"
