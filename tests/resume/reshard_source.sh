#!/usr/bin/env bash
# reshard_source.sh: the tp2 x ep2 run (4 ranks, 3 steps, a checkpoint every step) the reshard tests load from,
# saved as 3 files per rank (checkpoint.writers 3; the targets re-save with 2).
source "$(dirname "$0")/lib.sh"
src=$WORK/reshard_src; rm -rf "$src"
train_np 4 "$src" --parallel.tp 2 --parallel.ep 2 --train.steps 3 --checkpoint.interval 1 --checkpoint.keep 3 \
  --checkpoint.writers 3 --train.log_interval 100 > "$WORK/reshard_src.log" || { cat "$WORK/reshard_src.log"; fail "source run"; }
[ -f "$(ckpt "$src" 2)/COMPLETE" ] || fail "no step 2 checkpoint"
[ "$(ls "$(ckpt "$src" 2)" | grep -c '^rank_.*\.h5$')" -eq 12 ] || fail "expected 4 ranks x 3 files"
echo "PASS: source checkpoint written"
