#!/usr/bin/env bash
# reshard_source.sh: the tp2 x ep2 run (4 ranks, 3 steps, a checkpoint every step) the reshard tests load from.
source "$(dirname "$0")/lib.sh"
src=$WORK/reshard_src; rm -rf "$src"
train_np 4 "$src" --parallel.tp 2 --parallel.ep 2 --train.steps 3 --checkpoint.interval 1 --checkpoint.keep 3 \
  --train.log_interval 100 > "$WORK/reshard_src.log" || { cat "$WORK/reshard_src.log"; fail "source run"; }
[ -f "$(ckpt "$src" 2)/COMPLETE" ] || fail "no step 2 checkpoint"
echo "PASS: source checkpoint written"
