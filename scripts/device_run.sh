#!/usr/bin/env bash
# One full GPU session on the device machine (binaries built here with CUDA, carried in build-cuda/bin):
# every GPU test, the op and layer benchmarks, and a short GPU training run. Logs and JSON go to $OUT.
set -uo pipefail
BIN=${BIN:-build-cuda/bin}
OUT=${OUT:-/tmp/monta-out}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
status=0
for t in test_gpu test_gpu_model; do
  [ -x "$BIN/$t" ] || continue
  echo "== $t"
  "$BIN/$t" --gtest_brief=1 2>&1 | tee "$OUT/$t.log" | tail -n 15
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "$t FAILED"; status=1; }
done
if [ -x "$BIN/test_nccl" ]; then
  echo "== test_nccl (1 rank)"
  mpirun --allow-run-as-root -np 1 "$BIN/test_nccl" --gtest_brief=1 2>&1 | tee "$OUT/test_nccl.log" | tail -n 8
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "test_nccl FAILED"; status=1; }
fi
echo "== train tiny on cuda"
"$BIN/monta" train --config configs/tiny.ini --train.device cuda --train.steps 100 --train.log_interval 25 \
  --train.run_dir /tmp/tiny_gpu 2>&1 | tee "$OUT/train_tiny_gpu.log" | grep -E "step|floor|error" || status=1
echo "== bench ops"
"$BIN/monta" bench ops --iters 10 --json "$OUT/bench_ops.json" 2>&1 | tee "$OUT/bench_ops.log" || status=1
echo "== bench layer"
"$BIN/monta" bench layer --iters 5 --json "$OUT/bench_layer.json" 2>&1 | tee "$OUT/bench_layer.log" || status=1
exit $status
