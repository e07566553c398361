#!/usr/bin/env bash
# The optimizer's memory options on the H200 machine (issue 15 §3, §4): the GPU tests of AdamW with bf16 moments
# (CUDA = CPU bit for bit) and of host offload (= the device optimizer bit for bit), the host AdamW rate of this
# machine's CPU (`monta bench optimizer`: parameters/s and per thread, fp32 and bf16 moments), and a short tiny run
# with each option for the per-rank memory lines and step times. A few minutes; binaries from $BIN (a CUDA build),
# logs and JSON in $OUT.
set -uo pipefail
BIN=${BIN:-build/bin}
OUT=${OUT:-/tmp/monta-out}
M="$BIN/monta"
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; lscpu | grep -E "^Model name|^CPU\(s\)|^Thread|^Core|^Socket"; free -g | sed -n 2p; } \
  | tee "$OUT/machine.txt"
rc=0

# 1. GPU tests: the AdamW kernels (bf16 moments against the CPU, bit for bit) and the whole model with offload.
timeout 300 "$BIN/test_gpu" --gtest_filter='GpuAdamW.*' 2>&1 | tee "$OUT/test_gpu_adamw.log" | tail -n 3
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
timeout 300 "$BIN/test_gpu_model" 2>&1 | tee "$OUT/test_gpu_model.log" | tail -n 3
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1

# 2. The host AdamW rate: 256 M parameters (about 4.6 GB of host state with fp32 moments), 1, 2, 4, ... threads.
timeout 400 "$M" bench optimizer --params 268435456 --iters 5 --json "$OUT/bench_optimizer.json" 2>&1 \
  | tee "$OUT/bench_optimizer.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1

# 3. The tiny config for 30 steps with each option: the memory lines --dry-run prints, and step times.
for opts in "" "--train.optimizer_state bf16" "--train.optimizer_offload true" \
            "--train.optimizer_offload true --train.optimizer_state bf16"; do
  tag=$(echo "base $opts" | tr -c 'a-z0-9\n' '_' | tr -s '_')
  # shellcheck disable=SC2086
  timeout 120 "$M" train --config configs/tiny.ini --train.device cuda --train.steps 30 --train.log_interval 10 \
    --train.eval_steps 0 --train.run_dir "$OUT/run_$tag" $opts > "$OUT/train_$tag.log" 2>&1 || rc=1
  echo "== $tag"; grep -E "per rank|optimizer state|step +30" "$OUT/train_$tag.log"
  rm -rf "$OUT/run_$tag"
done | tee "$OUT/summary.txt"
echo "device_optimizer: exit $rc"
exit $rc
