#!/usr/bin/env bash
# async_overlap.sh: with checkpoint.async, training steps go on while a save is written (the writer is held back by
# MONTA_TEST_SLOW_SAVE_MS), the next save waits for the one in flight and says so, and what is written is the
# snapshot of the step that saved: the checkpoints and the losses equal those of a run with synchronous saves.
source "$(dirname "$0")/lib.sh"
w=$WORK/async_overlap; rm -rf "$w"; mkdir -p "$w"
common=(--parallel.ep 2 --train.log_interval 1 --checkpoint.interval 3 --train.steps 6)
MONTA_TEST_SLOW_SAVE_MS=5000 train_np 2 "$w/async" "${common[@]}" --checkpoint.async true > "$w/async.log" ||
  { cat "$w/async.log"; fail "async run"; }
train_np 2 "$w/sync" "${common[@]}" --checkpoint.async false > "$w/sync.log" || { cat "$w/sync.log"; fail "sync run"; }
# The lines of the step-3 save in order: snapshot, then steps 4 and 5 while rank 0's writer is held, then its write.
started=$(grep -n "^checkpoint step 3: snapshot of .* writing it in the background" "$w/async.log" | head -n 1 | cut -d: -f1)
written=$(grep -n "^checkpoint step 3: rank 0 wrote its shard in the background" "$w/async.log" | head -n 1 | cut -d: -f1)
[ -n "$started" ] && [ -n "$written" ] || { cat "$w/async.log"; fail "no 'snapshot' / 'wrote its shard' lines for step 3"; }
between=$(sed -n "${started},${written}p" "$w/async.log" | sed -n 's/^step *\([0-9]*\) | loss.*/\1/p' | tr '\n' ' ')
echo "steps logged while the step-3 save was being written: $between"
[ "$between" = "4 5 6 " ] || { cat "$w/async.log"; fail "expected steps 4 5 6 during the background write, got '$between'"; }
grep -q "^checkpoint step 3 is still being written; the save of step 6 waits for it$" "$w/async.log" ||
  { cat "$w/async.log"; fail "the second save did not say it waits for the first"; }
grep -q "^checkpoint step 3: waited [0-9.]* ms for its background write$" "$w/async.log" || fail "no 'waited' line"
grep -q "^saved checkpoint $(ckpt "$w/async" 3): training paused" "$w/async.log" || fail "step 3 never completed"
[ -f "$(ckpt "$w/async" 6)/COMPLETE" ] || fail "the final save did not complete"
diff <(losses "$w/sync/metrics.jsonl") <(losses "$w/async/metrics.jsonl") || fail "losses differ from the sync run"
for s in 3 6; do
  diff <(grep '^file\.' "$(ckpt "$w/sync" $s)/manifest.txt") <(grep '^file\.' "$(ckpt "$w/async" $s)/manifest.txt") ||
    fail "step $s shards differ from the sync run's (the writer did not write the snapshot?)"
done
echo "PASS: steps ran during the background write, the second save waited, the shards equal the sync run's"
