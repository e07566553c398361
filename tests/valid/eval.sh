#!/usr/bin/env bash
# eval.sh NP [TP EP]: `monta eval` on valid_run's checkpoints at steps 20 and 40, on NP ranks (layout tp TP, ep EP),
# equals the val_loss the run wrote for that step: exactly (all 17 digits) on one rank, the run's layout; within
# 1e-5 relative in another layout (the equivalence bound). Also --data.path and --eval_steps override the data.
source "$(dirname "$0")/../resume/lib.sh"
np=$1 tp=${2:-1} ep=${3:-1}
w=$WORK/valid_run
eval_np() {
  if [ "$np" -eq 1 ]; then "$MONTA" eval --train.device cpu "$@" 2>&1
  else "$MPIEXEC" --allow-run-as-root --oversubscribe -np "$np" "$MONTA" eval --train.device cpu \
    --parallel.tp "$tp" --parallel.ep "$ep" "$@" 2>&1; fi
}
json_val() { python3 -c "import json,sys; print(repr(json.load(open(sys.argv[1]))[sys.argv[2]]))" "$1" "$2"; }
for step in 20 40; do
  out=$WORK/valid_eval_np${np}_${step}.json; rm -f "$out"
  eval_np --checkpoint "$(ckpt "$w" "$step")" --json "$out" > "$out.log" || { cat "$out.log"; fail "monta eval at step $step"; }
  grep "val_loss" "$out.log"
  run_val=$(val_at "$w/metrics.jsonl" "$step") ev=$(json_val "$out" val_loss)
  [ "$(json_val "$out" step)" = "$step" ] || fail "eval JSON names step $(json_val "$out" step), not $step"
  if [ "$np" -eq 1 ]; then
    [ "$ev" = "$run_val" ] || fail "step $step: eval $ev != run's val_loss $run_val"
  else
    close "$ev" "$run_val" 1e-5 || fail "step $step: eval $ev not within 1e-5 of the run's val_loss $run_val"
  fi
  echo "step $step: run val_loss $run_val, monta eval (np $np, tp $tp, ep $ep) $ev"
done
if [ "$np" -eq 1 ]; then  # another file, fewer batches: the overrides reach the evaluation
  out=$WORK/valid_eval_file.json
  train_file=$(ls "$w"/markov_*.h5 | grep -v _valid)
  eval_np --checkpoint "$(ckpt "$w" 40)" --data.path "$train_file" --eval_steps 2 --json "$out" > "$out.log" ||
    { cat "$out.log"; fail "monta eval --data.path"; }
  [ "$(json_val "$out" eval_steps)" = 2 ] && [ "$(json_val "$out" valid_path)" = "'$train_file'" ] ||
    { cat "$out"; fail "--data.path / --eval_steps not applied"; }
fi
echo "PASS: monta eval on np $np equals the run's val_loss"
