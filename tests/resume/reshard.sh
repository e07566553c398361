#!/usr/bin/env bash
# reshard.sh NP TP EP: a checkpoint saved at step 2 by 4 ranks (tp2 x ep2, 3 files each) loads into NP ranks with
# TP x EP, which re-save it as 2 files each (another checkpoint.writers).
# Re-saved there at step 2 (no step run) its export is byte-identical to the original's (same logical tensors),
# and the next step's loss matches the tp2 x ep2 run's within float tolerance (other reduction order), which
# also shows the loader resumed at the same global sample.
source "$(dirname "$0")/lib.sh"
np=$1 tp=$2 ep=$3
src=$WORK/reshard_src
# The source run is shared by the reshard tests (a CTest fixture, reshard_source).
w=$WORK/reshard_np${np}_tp${tp}_ep${ep}; rm -rf "$w"; mkdir -p "$w"
run() { if [ "$np" -eq 1 ]; then train "$@"; else train_np "$np" "$@"; fi; }
common=(--parallel.tp "$tp" --parallel.ep "$ep" --train.log_interval 100 --checkpoint.writers 2)
run "$w/run" "${common[@]}" --train.steps 2 --checkpoint.interval 1 --checkpoint.resume "$(ckpt "$src" 2)" > "$w/resave.log" ||
  { cat "$w/resave.log"; fail "load + re-save"; }
grep -q "resumed from $(ckpt "$src" 2) at step 2 (saved by 4 ranks: tp 2, ep 2)" "$w/resave.log" || fail "did not resume"
grep -q "^world = $np$" "$(ckpt "$w/run" 2)/manifest.txt" || fail "re-saved checkpoint is not in the new layout"
grep -q "^writers = 2$" "$(ckpt "$w/run" 2)/manifest.txt" || fail "re-saved checkpoint does not have 2 files per rank"
"$MONTA" export --checkpoint "$(ckpt "$src" 2)" --out "$w/src.h5" > /dev/null 2>&1 || fail "export source"
"$MONTA" export --checkpoint "$(ckpt "$w/run" 2)" --out "$w/resaved.h5" > /dev/null 2>&1 || fail "export re-saved"
cmp "$w/src.h5" "$w/resaved.h5" || fail "export after resharding differs"
run "$w/run" "${common[@]}" --train.steps 3 --checkpoint.interval 1 --checkpoint.resume auto > "$w/cont.log" ||
  { cat "$w/cont.log"; fail "continue"; }
grep -q "resumed from $(ckpt "$w/run" 2) at step 2" "$w/cont.log" || fail "continue did not resume at step 2"
want=$(loss_at "$src/metrics.jsonl" 3) got=$(loss_at "$w/run/metrics.jsonl" 3)
echo "step 3 loss: tp2 x ep2 $want, np $np tp $tp ep $ep $got"
close "$got" "$want" 1e-5 || fail "step 3 loss $got differs from $want"
echo "PASS: reshard tp2 x ep2 -> np $np tp $tp ep $ep"
