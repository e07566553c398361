#!/usr/bin/env bash
# The optimizer's memory options on the H200 machine (issue 15 §3, §4): the GPU tests of AdamW with bf16 moments
# (CUDA = CPU bit for bit) and of host offload (= the device optimizer bit for bit), the host AdamW rate of this
# machine's CPU (`monta bench optimizer`: parameters/s and per thread, fp32 and bf16 moments), a short tiny run
# with each option for the per-rank memory lines and step times, and ZeRO-1 over NCCL (2 and 4 ranks on one GPU,
# a node per rank) against zero 0. About 10 minutes; binaries from $BIN (a CUDA build), logs and JSON in $OUT.
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
# 4. ZeRO-1 over NCCL (node per rank: one GPU is enough): the tiny model on 2 ranks (dp 2) and 4 ranks (tp 1, ep 2:
# dense state over 4 ranks, experts over 2), zero 1 alone, with bf16 moments and with offload, against zero 0 of
# the same layout: the per-step losses agree within 2e-3 (bf16 activations; the sharded norm's rounding), printed.
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none"
losses() { grep -oE "step +[0-9]+ \| loss [0-9.]+" "$1" | awk '{print $2, $5}'; }
zrun() {  # zrun NAME NP ARGS...: 20 steps of the tiny model over NCCL
  local name=$1 np=$2; shift 2
  timeout 240 $MPI -np "$np" "$M" train --config configs/tiny.ini --train.device cuda --train.steps 20 \
    --train.log_interval 1 --train.eval_steps 0 --train.run_dir "$OUT/run_$name" "$@" > "$OUT/train_$name.log" 2>&1 ||
    { echo "  $name: exit $?"; tail -n 5 "$OUT/train_$name.log"; }
  rm -rf "$OUT/run_$name"
}
{
  for layout in np2 np4_ep2; do
    if [ $layout = np2 ]; then np=2; args=(--comm.emulate_nodes 2); else np=4; args=(--parallel.ep 2 --comm.emulate_nodes 4 --comm.exchange duplicate); fi
    zrun ${layout}_zero0 $np "${args[@]}"
    zrun ${layout}_zero1 $np "${args[@]}" --train.zero 1
    zrun ${layout}_zero1_bf16 $np "${args[@]}" --train.zero 1 --train.optimizer_state bf16
    zrun ${layout}_zero1_offload $np "${args[@]}" --train.zero 1 --train.optimizer_offload true
    for tag in zero1 zero1_bf16 zero1_offload; do
      paste -d' ' <(losses "$OUT/train_${layout}_zero0.log") <(losses "$OUT/train_${layout}_$tag.log") | awk -v n0="$layout $tag" '
        { d = ($2 - $4) / $2; if (d < 0) d = -d; if (d > m) m = d; n++ }
        END { printf "  %s against zero 0: %d steps, max relative |d loss| %.2e -> %s\n", n0, n, m, (n == 20 && m <= 2e-3) ? "ok" : "FAIL" }'
    done
  done
} 2>&1 | tee "$OUT/zero_nccl.txt"
grep -qE "FAIL|exit" "$OUT/zero_nccl.txt" && rc=1
echo "device_optimizer: exit $rc"
exit $rc
