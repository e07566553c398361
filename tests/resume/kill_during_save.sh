#!/usr/bin/env bash
# kill_during_save.sh: kill -9 one of 2 ranks in the middle of the step-4 save: 3 files per rank, the rank's second
# file already written and renamed, its first held back (MONTA_TEST_SLOW_SAVE_MS), no manifest; the job dies, and
# `resume auto` then takes the step-2 checkpoint and finishes, with the losses of an uninterrupted run.
source "$(dirname "$0")/lib.sh"
w=$WORK/kill_during_save; rm -rf "$w"; mkdir -p "$w"
common=(--parallel.ep 2 --train.log_interval 100 --checkpoint.interval 2 --checkpoint.writers 3)
MONTA_TEST_SLOW_SAVE_MS=1500 train_np 2 "$w/run" "${common[@]}" --train.steps 6 > "$w/killed.log" &
job=$!
pid=""
for _ in $(seq 1 300); do
  pid=$(sed -n 's/^monta: test hook: rank 1 pid \([0-9]*\) sleeping .* save of step 4$/\1/p' "$w/killed.log" | head -n 1)
  [ -n "$pid" ] && break
  sleep 0.1
done
[ -n "$pid" ] || { kill $job; cat "$w/killed.log"; fail "rank 1 never reached the step-4 save"; }
part=$w/run/checkpoints/step_00000004.tmp/rank_00001.1.h5
for _ in $(seq 1 100); do [ -f "$part" ] && break; sleep 0.05; done
[ -f "$part" ] || { kill $job; fail "rank 1's second file of the step-4 save was never written"; }
[ ! -f "$w/run/checkpoints/step_00000004.tmp/rank_00001.h5" ] || fail "rank 1's first file was written despite the hook"
kill -9 "$pid"
wait $job && fail "the job survived the kill"
[ -f "$(ckpt "$w/run" 2)/COMPLETE" ] || fail "step 2 checkpoint lost"
[ ! -e "$(ckpt "$w/run" 4)" ] || fail "an incomplete step 4 checkpoint took the final name"
train_np 2 "$w/run" "${common[@]}" --train.steps 6 --checkpoint.resume auto > "$w/resumed.log" || { cat "$w/resumed.log"; fail "resume"; }
grep -q "resumed from $(ckpt "$w/run" 2) at step 2" "$w/resumed.log" || { cat "$w/resumed.log"; fail "did not resume from step 2"; }
[ -f "$(ckpt "$w/run" 6)/COMPLETE" ] || fail "no step 6 checkpoint after resuming"
train_np 2 "$w/straight" "${common[@]}" --train.steps 6 > "$w/straight.log" || fail "straight run"
diff <(losses "$w/straight/metrics.jsonl" 3 6) <(losses "$w/run/metrics.jsonl" 3 6 | tail -n 4) || fail "resumed losses differ"
echo "PASS: killed rank during save; resumed from step 2"
