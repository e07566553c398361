#!/usr/bin/env bash
# watchdog.sh NP: with MONTA_TEST_STALL_RANK the last rank sleeps forever at step 2; train.step_timeout_s 5 must
# end the whole job non-zero within 30 s, with a message naming the rank and the step.
# watchdog.sh stop: 4 ranks, rank 2 stopped with SIGSTOP mid-run (its heartbeat stands still); the job must end
# within 30 s and the message must name rank 2 as the one that stalled, not only the rank whose watchdog fired.
source "$(dirname "$0")/lib.sh"
np=$1
w=$WORK/watchdog_np$np; rm -rf "$w"; mkdir -p "$w"
start=$(date +%s)
if [ "$np" = stop ]; then
  MONTA_TEST_STALL_RANK= timeout 60 "$MPIEXEC" --allow-run-as-root --oversubscribe -np 4 "$MONTA" train --config "$CFG" \
    --train.device cpu --train.run_dir "$w/run" --train.steps 100000 --train.log_interval 100000 \
    --train.step_timeout_s 5 > "$w/log" 2>&1 &
  job=$!
  victim=""
  for _ in $(seq 1 300); do
    read -r _ phase _ holder _ < "$w/run/.progress/rank_2" 2>/dev/null && [ "${phase:-0}" -ge 4 ] && victim=${holder%@*} && break
    sleep 0.1
  done
  [ -n "$victim" ] || { kill -- $job; cat "$w/log"; fail "rank 2 never reached step 2"; }
  start=$(date +%s)
  kill -STOP "$victim"
  wait $job
  rc=$?
  kill -CONT "$victim" 2>/dev/null; kill -9 "$victim" 2>/dev/null
  took=$(( $(date +%s) - start ))
  grep "^monta: error:" "$w/log" | head -n 4
  [ $rc -ne 0 ] || fail "stalled job exited 0"
  [ $rc -ne 124 ] || fail "stalled job still running after 60 s"
  [ $took -le 30 ] || fail "took $took s"
  grep -q "^monta: error: .*rank [0-9]: step [0-9]* did not finish within 5 s (train.step_timeout_s); stalled: rank 2 ($victim@" "$w/log" ||
    fail "the message does not name rank 2 (pid $victim) as the one that stalled"
  ! grep "^monta: error:" "$w/log" | grep -q "stalled: rank [013] \|cannot tell" || fail "a message did not name rank 2, or named a live rank"
  echo "PASS: rank 2 stopped; the job ended after $took s naming it"
  exit 0
fi
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
