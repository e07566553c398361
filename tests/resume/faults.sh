#!/usr/bin/env bash
# faults.sh CASE: one bad checkpoint or run directory -> the promised one-line error, a non-zero exit and an
# untouched run directory; `resume auto` skips a broken newest checkpoint and resumes from the previous one.
# CASE base writes the shared single-rank run (checkpoints at steps 2 and 4, two files each: checkpoint.writers 2,
# so rank_00000.h5 is ~3.4 MB and holds the byte corrupt_shard flips) the other cases copy.
source "$(dirname "$0")/lib.sh"
case_=$1
base=$WORK/faults_base
if [ "$case_" = base ]; then
  rm -rf "$base"
  train "$base" --train.steps 4 --checkpoint.interval 2 --checkpoint.writers 2 --train.log_interval 100 \
    > "$WORK/faults_base.log" ||
    { cat "$WORK/faults_base.log"; fail "base run"; }
  echo "PASS: base run"; exit 0
fi
w=$WORK/faults_$case_; rm -rf "$w"; mkdir -p "$w"
run=$w/run; cp -r "$base" "$run"
bad=$(ckpt "$run" 4) shard=$(ckpt "$run" 4)/rank_00000.h5

# Breaks the newest checkpoint, checks the explicit-resume error changes nothing, then that auto skips it.
broken_newest() {
  local phrase=$1 before
  before=$(snapshot "$run")
  expect_error "$phrase" train "$run" --train.steps 6 --checkpoint.interval 2 --checkpoint.resume "$bad"
  grep "^monta: error:" <<<"$(train "$run" --train.steps 6 --checkpoint.resume "$bad")" | grep -qF "$bad" ||
    fail "error does not name the checkpoint"
  [ "$before" = "$(snapshot "$run")" ] || fail "the failed run changed files in the run directory"
  local out; out=$(train "$run" --train.steps 5 --checkpoint.interval 0 --checkpoint.resume auto) || { echo "$out"; fail "auto"; }
  grep -q "skipping checkpoint $bad: .*$phrase" <<<"$out" || { echo "$out"; fail "auto did not warn about $bad"; }
  grep -q "resumed from $(ckpt "$run" 2) at step 2" <<<"$out" || fail "auto did not fall back to step 2"
  [ "$(loss_at "$run/metrics.jsonl" 3)" = "$(loss_at "$base/metrics.jsonl" 3)" ] || fail "fallback resume is not exact"
}

case $case_ in
  missing_shard) rm "$shard"; broken_newest "rank_00000.h5 is missing" ;;
  missing_part) rm "$bad/rank_00000.1.h5"; broken_newest "rank_00000.1.h5 is missing" ;;  # the second file of the rank
  truncated_shard) truncate -s 100000 "$shard"; broken_newest "rank_00000.h5 is truncated or altered (100000 bytes" ;;
  corrupt_shard)
    printf '\xde\xad\xbe\xef' | dd of="$shard" bs=1 seek=1500000 conv=notrunc status=none
    broken_newest "rank_00000.h5 fails its checksum (corrupt)" ;;
  no_marker) rm "$bad/COMPLETE"; broken_newest "incomplete (no COMPLETE marker)" ;;
  other_model)
    before=$(snapshot "$run")
    expect_error "$(ckpt "$run" 4)/manifest.txt is of another model" train "$run" --model.layers 3 --train.steps 6 --checkpoint.resume auto
    expect_error "is of another model" train "$run" --model.hidden 32 --train.steps 6 --checkpoint.resume "$(ckpt "$run" 2)"
    [ "$before" = "$(snapshot "$run")" ] || fail "the failed run changed files in the run directory" ;;
  other_seed)
    expect_error "was written with train.seed 1234 but the config has 7" train "$run" --train.seed 7 --train.steps 6 --checkpoint.resume auto ;;
  no_checkpoint)
    expect_error "checkpoint directory $run/checkpoints/step_00000099 does not exist" train "$run" --train.steps 6 --checkpoint.resume "$run/checkpoints/step_00000099" ;;
  rundir_proc)
    expect_error "cannot create run directory '/proc/monta_test/run'" train /proc/monta_test/run --train.steps 1 ;;
  rundir_under_file)
    touch "$w/file"
    expect_error "cannot create run directory '$w/file/run'" train "$w/file/run" --train.steps 1 ;;
  ckptdir_unwritable)
    # The run directory works but checkpoints/ is a file: refused before step 1, naming it.
    rm -rf "$run/checkpoints"; touch "$run/checkpoints"
    expect_error "cannot use checkpoint directory $run/checkpoints: it exists and is not a directory" train "$run" --train.steps 2 --checkpoint.interval 1 ;;
  disk_full)
    # A file-size limit makes writes past 2.5 MB fail (EFBIG) as a full disk would; the 3 MB shard cannot be
    # written. The error names the file; the step-4 checkpoint is still the newest complete one afterwards.
    # (Under mpirun so the limit binds the rank only: a singleton's PMIx server needs larger files.)
    before=$(snapshot "$(ckpt "$run" 4)")
    expect_error "checkpoint file $run/checkpoints/step_00000005.tmp/rank_00000.h5.tmp" \
      "$MPIEXEC" --allow-run-as-root -np 1 bash -c 'trap "" XFSZ; ulimit -f 2500; exec "$@"' _ "$MONTA" train --config "$CFG" --train.device cpu ${ASYNC[@]+"${ASYNC[@]}"} \
      --train.run_dir "$run" --train.steps 5 --checkpoint.interval 1 --checkpoint.resume auto --checkpoint.writers 1
    [ "$before" = "$(snapshot "$(ckpt "$run" 4)")" ] || fail "step 4 checkpoint changed"
    out=$(train "$run" --train.steps 5 --checkpoint.resume auto) || { echo "$out"; fail "resume after disk full"; }
    grep -q "resumed from $(ckpt "$run" 4) at step 4" <<<"$out" || fail "did not resume from step 4" ;;
  *) fail "unknown case $case_" ;;
esac
echo "PASS: $case_"
