#!/usr/bin/env bash
# Sequence parallelism over NCCL on the H200 machine (issue 15 §2, §6): the tiny model trained on one GPU with a node
# per rank (--comm.emulate_nodes = ranks, so every collective crosses NCCL's socket transport), SP on against SP off
# in the same layout: tp 2 on 2 ranks, and tp 2 x ep 2 on 4 ranks with drop_gather, pipelined, overlapped and auto,
# expert-TP on and off, recompute full. The loss of every step must agree within LOSS_TOL relative (bf16
# activations: SP rounds the row-parallel sums and the residual add separately), and the GPU router ops of SP
# (router_choice_counts, router_sp_slots) must equal the CPU's (test_gpu). About 90 s; binaries from $BIN (a CUDA
# build), logs in $OUT. Exit status non-zero on any failure.
set -uo pipefail
BIN=${BIN:-build/bin}
OUT=${OUT:-/tmp/monta-out}
STEPS=${STEPS:-12}
LOSS_TOL=${LOSS_TOL:-5e-3}
M="$BIN/monta"
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none"
rc=0

timeout 120 "$BIN/test_gpu" --gtest_filter='*RouterSp*' 2>&1 | tee "$OUT/sp_test_gpu.log" | tail -n 3
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1

losses() { grep -oE "step +[0-9]+ \| loss [0-9.]+" "$1" | awk '{print $2, $5}'; }
run() {  # run NAME NP ARGS...: STEPS steps of the tiny model over NCCL, a node per rank
  local name=$1 np=$2; shift 2
  timeout 120 $MPI -np "$np" "$M" train --config configs/tiny.ini --train.device cuda --train.steps "$STEPS" \
    --train.log_interval 1 --train.eval_steps 0 --train.run_dir "$OUT/run_sp_$name" --comm.emulate_nodes "$np" \
    "$@" > "$OUT/train_sp_$name.log" 2>&1 || { echo "  $name: exit $?"; tail -n 5 "$OUT/train_sp_$name.log"; }
  rm -rf "$OUT/run_sp_$name"
}
compare() {  # compare OFF ON: every step's loss within LOSS_TOL relative
  paste -d' ' <(losses "$OUT/train_sp_$1.log") <(losses "$OUT/train_sp_$2.log") | awk -v n0="$2 against $1" \
    -v steps="$STEPS" -v tol="$LOSS_TOL" '
    { d = ($2 - $4) / $2; if (d < 0) d = -d; if (d > m) m = d; n++ }
    END { printf "  %s: %d steps, max relative |d loss| %.2e -> %s\n", n0, n, m, (n == steps && m <= tol) ? "ok" : "FAIL" }'
}
{
  run tp2_off 2 --parallel.tp 2
  run tp2_sp 2 --parallel.tp 2 --parallel.sequence_parallel true
  run tp2_sp_full 2 --parallel.tp 2 --parallel.sequence_parallel true --train.recompute full
  compare tp2_off tp2_sp
  compare tp2_off tp2_sp_full
  L=(--parallel.tp 2 --parallel.ep 2)
  run tp2ep2_off 4 "${L[@]}" --comm.exchange drop_gather
  for x in drop_gather pipelined overlapped auto; do
    run tp2ep2_sp_$x 4 "${L[@]}" --comm.exchange $x --parallel.sequence_parallel true
    compare tp2ep2_off tp2ep2_sp_$x
  done
  run tp2ep2_sp_overlapped_full 4 "${L[@]}" --comm.exchange overlapped --parallel.sequence_parallel true --train.recompute full
  compare tp2ep2_off tp2ep2_sp_overlapped_full
  run tp2ep2_ewhole_off 4 "${L[@]}" --parallel.expert_tp false --comm.exchange pipelined
  run tp2ep2_ewhole_sp 4 "${L[@]}" --parallel.expert_tp false --comm.exchange pipelined --parallel.sequence_parallel true
  compare tp2ep2_ewhole_off tp2ep2_ewhole_sp
  echo "  per-rank activation memory, off and on:"
  grep -hE "activations" "$OUT/train_sp_tp2ep2_off.log" "$OUT/train_sp_tp2ep2_sp_drop_gather.log" | head -n 4
} 2>&1 | tee "$OUT/sp_nccl.txt"
grep -qE "FAIL|exit" "$OUT/sp_nccl.txt" && rc=1
echo "device_sp: exit $rc"
exit $rc
