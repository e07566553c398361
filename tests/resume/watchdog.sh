#!/usr/bin/env bash
# watchdog.sh NP: with MONTA_TEST_STALL_RANK the last rank sleeps forever at step 2; train.step_timeout_s 5 must
# end the whole job non-zero within 30 s, with a message naming the rank and the step.
source "$(dirname "$0")/lib.sh"
np=$1
w=$WORK/watchdog_np$np; rm -rf "$w"; mkdir -p "$w"
start=$(date +%s)
if [ "$np" -eq 1 ]; then
  MONTA_TEST_STALL_RANK=0 timeout 60 "$MONTA" train --config "$CFG" --train.device cpu --train.run_dir "$w/run" \
    --train.steps 4 --train.step_timeout_s 5 > "$w/log" 2>&1
else
  MONTA_TEST_STALL_RANK=$((np - 1)) timeout 60 "$MPIEXEC" --allow-run-as-root --oversubscribe -np "$np" \
    -x MONTA_TEST_STALL_RANK "$MONTA" train --config "$CFG" --train.device cpu --train.run_dir "$w/run" \
    --parallel.ep "$np" --train.steps 4 --train.step_timeout_s 5 > "$w/log" 2>&1
fi
rc=$?
took=$(( $(date +%s) - start ))
tail -n 20 "$w/log"
[ $rc -ne 0 ] || fail "stalled job exited 0"
[ $rc -ne 124 ] || fail "stalled job still running after 60 s"
[ $took -le 30 ] || fail "took $took s"
grep -q "^monta: error: .*rank [0-9]*: step 2 did not finish within 5 s" "$w/log" || fail "no watchdog message"
echo "PASS: stalled job (np $np) ended after $took s"
