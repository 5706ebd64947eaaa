#!/usr/bin/env bash
# Every issue-6 figure on one GPU: the optimizer updates, the GPT-2 124M train step for four
# optimizers at batch 12 and 32, the largest batch, and one row per speed change (each
# change switched off in turn, so its effect is measured against the default).
#
#   bash benchmarks/gpu_suite.sh [RESULTS_DIR] [PART]
#
# PART: all (default) | optim | step | ablations — the parts take about 2, 8 and 4 minutes
# on an H100 (each train_bench row is its own process: start-up, compile, 10 timed steps).
# Results: JSON per benchmark in RESULTS_DIR (default benchmarks/results) and the printed
# tables in RESULTS_DIR/gpu_suite.log.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
part=${2:-all}
mkdir -p "$out"
log="$out/gpu_suite.log"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

run() { echo "+ $*" | tee -a "$log"; "$python" "$@" 2>&1 | tee -a "$log"; }

"$python" -c "import jax; print('devices:', jax.devices())" | tee -a "$log"
if [[ $part == all || $part == optim ]]; then
  run benchmarks/optim_bench.py --stacked --json "$out/optim_bench_stacked_gpu.json"
  run benchmarks/optim_bench.py --json "$out/optim_bench_gpu.json"
fi
if [[ $part == all || $part == step ]]; then
  run benchmarks/train_bench.py --batch-sizes 12,32 --find-max-batch \
      --json "$out/train_bench_gpt2_124m_gpu.json"
fi
if [[ $part == all || $part == ablations ]]; then
  ablate() {  # label, override: signum at batch 32 with one change undone
    run benchmarks/train_bench.py --optimizers signum --batch-sizes 32 --label "$1" "$2" \
        --json "$out/train_bench_gpt2_124m_$1_gpu.json"
  }
  ablate xla-attention --config.model.attention_impl=xla
  ablate full-logits --config.train.loss_chunk_len=0
  ablate remat-dots --config.model.remat=dots
  ablate chunk-128 --config.train.loss_chunk_len=128
fi
