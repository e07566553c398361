#!/usr/bin/env bash
# safety.sh CASE: hostile checkpoints, run directories and outputs (issue 13 §4) -> one "monta: error:" line and
# nothing lost, never a crash; documented fallbacks happen. Cases copy the faults_base run (checkpoints at steps
# 2 and 4) where they need checkpoints.
source "$(dirname "$0")/lib.sh"
case_=$1
base=$WORK/faults_base
w=$WORK/safety_$case_; rm -rf "$w"; mkdir -p "$w"
run=$w/run; cp -r "$base" "$run"
new=$(ckpt "$run" 4) old=$(ckpt "$run" 2)
man=$new/manifest.txt

# The newest checkpoint is broken: naming it is an error that changes nothing; auto falls back to step 2.
falls_back() {
  local phrase=$1 before out
  before=$(snapshot "$run")
  expect_error "$phrase" train "$run" --train.steps 6 --checkpoint.resume "$new"
  [ "$before" = "$(snapshot "$run")" ] || fail "the refused run changed files in the run directory"
  out=$(train "$run" --train.steps 3 --checkpoint.resume auto) || { echo "$out"; fail "auto did not fall back"; }
  grep -q "skipping checkpoint $new: .*$phrase" <<<"$out" || { echo "$out"; fail "no warning about $new"; }
  grep -q "resumed from $old at step 2" <<<"$out" || { echo "$out"; fail "auto did not fall back to step 2"; }
}
# legacy: drops the manifest's checksum line, as an older monta wrote it.
legacy() { sed -i '/^manifest_checksum = /d' "$1"; }
# no_crash CMD...: whatever CMD does, it must not end in a signal or an uncaught exception.
no_crash() {
  local out rc; out=$("$@" 2>&1); rc=$?
  [ $rc -lt 128 ] || { echo "$out"; fail "crashed with status $rc: $*"; }
  ! grep -q "terminate called\|Aborted\|core dumped" <<<"$out" || { echo "$out"; fail "uncaught exception: $*"; }
  echo "$out"
}

case $case_ in
  # Class: crashes in checkpoint handling.
  manifest_world_nan)
    legacy "$man"; sed -i 's/^world = .*/world = abc/' "$man"
    no_crash train "$run" --train.steps 6 --checkpoint.resume "$new" > /dev/null
    falls_back "manifest.txt has world = 'abc', not an integer" ;;
  manifest_world_overflow)
    legacy "$man"; sed -i 's/^world = .*/world = 99999999999999999999999/' "$man"
    falls_back "manifest.txt has world = '99999999999999999999999', not an integer" ;;
  step_dir_21_digits)
    mkdir "$run/checkpoints/step_123456789012345678901"
    out=$(no_crash train "$run" --train.steps 6 --checkpoint.interval 1 --checkpoint.resume auto) || fail "resume"
    grep -q "resumed from $new at step 4" <<<"$out" || { echo "$out"; fail "did not resume from step 4"; }
    grep -q "ignoring $run/checkpoints/step_123456789012345678901" <<<"$out" || { echo "$out"; fail "no warning"; }
    [ -f "$(ckpt "$run" 6)/COMPLETE" ] || fail "rotation after the first save failed"
    [ -d "$run/checkpoints/step_123456789012345678901" ] || fail "rotation removed a directory that is not a checkpoint" ;;
  ckpt_dir_is_file)
    rm -rf "$run/checkpoints"; echo x > "$run/checkpoints"
    before=$(snapshot "$run")
    expect_error "cannot use checkpoint directory $run/checkpoints: it exists and is not a directory" \
      train "$run" --train.steps 6 --checkpoint.resume auto
    [ "$before" = "$(snapshot "$run")" ] || fail "the refused run changed files" ;;
  export_bad)
    expect_error "checkpoint directory $w/nope does not exist" "$MONTA" export --checkpoint "$w/nope" --out "$w/x.h5"
    expect_error "cannot create $w/no/dir/x.h5.tmp" "$MONTA" export --checkpoint "$new" --out "$w/no/dir/x.h5"
    legacy "$man"; sed -i 's/^world = .*/world = -1/' "$man"
    expect_error "manifest.txt has world = '-1'" "$MONTA" export --checkpoint "$new" --out "$w/x.h5" ;;
  # Class: a documented fallback.
  manifest_deleted)
    rm "$man"
    falls_back "manifest.txt is missing or unreadable" ;;
  # Class: a manifest edited by hand.
  manifest_edited)
    sed -i 's/^loader_sample = .*/loader_sample = 0/; s/^step = 4$/step = 40/' "$man"
    falls_back "manifest.txt fails its checksum (edited by hand or corrupt)" ;;
  manifest_negative_step)
    legacy "$man"; sed -i 's/^step = 4$/step = -3/' "$man"
    falls_back "manifest.txt has step = '-3', not an integer in" ;;
  manifest_legacy)  # written before the manifest checksum: trusted as it is, with a warning
    legacy "$man"
    out=$(train "$run" --train.steps 5 --checkpoint.resume auto) || { echo "$out"; fail "legacy resume"; }
    grep -q "resumed from $new at step 4" <<<"$out" || { echo "$out"; fail "did not resume"; }
    grep -q "has no manifest checksum" <<<"$out" || fail "no warning about the missing checksum" ;;
  # Class: data loss.
  fresh_over_checkpoints)
    before=$(snapshot "$run")
    expect_error "run directory $run holds checkpoints (newest $new); continue them with --checkpoint.resume auto, or start a new run with another train.run_dir" \
      train "$run" --train.steps 2 --checkpoint.interval 1
    [ "$before" = "$(snapshot "$run")" ] || fail "the refused run changed files"
    out=$(train "$run" --train.steps 1 --checkpoint.interval 1 --checkpoint.overwrite true) || { echo "$out"; fail "overwrite"; }
    [ -f "$(ckpt "$run" 1)/COMPLETE" ] || fail "overwrite did not save"
    [ ! -e "$new" ] || fail "the overwritten run's newer checkpoint is still there (resume auto would pick it)" ;;
  older_explicit)  # continuing from an older checkpoint of the same run would remove the newer ones at the first save
    before=$(snapshot "$run")
    expect_error "continuing from $old would remove the newer checkpoints of this run directory at its first save (newest $new)" \
      train "$run" --train.steps 3 --checkpoint.interval 1 --checkpoint.resume "$old"
    [ "$before" = "$(snapshot "$run")" ] || fail "the refused run changed files"
    out=$(train "$run" --train.steps 3 --checkpoint.interval 1 --checkpoint.resume "$old" --checkpoint.overwrite true) ||
      { echo "$out"; fail "overwrite"; }
    [ -f "$(ckpt "$run" 3)/COMPLETE" ] && [ ! -e "$new" ] || fail "expected step 3 saved and step 4 removed" ;;
  all_broken)
    for s in 2 4; do printf '\xde\xad\xbe\xef' | dd of="$(ckpt "$run" $s)/rank_00000.h5" bs=1 seek=1500000 conv=notrunc status=none; done
    before=$(snapshot "$run")
    expect_error "--checkpoint.resume auto: none of the 2 checkpoints under $run/checkpoints is usable" \
      train "$run" --train.steps 6 --checkpoint.interval 1 --checkpoint.resume auto
    [ "$before" = "$(snapshot "$run")" ] || fail "the refused run changed files" ;;
  export_outputs)
    before=$(snapshot "$run")
    expect_error "lies inside the checkpoint directory $new" "$MONTA" export --checkpoint "$new" --out "$new/rank_00000.h5"
    expect_error "lies inside the checkpoint directory $new" "$MONTA" export --checkpoint "$new" --out "$new/model.h5"
    expect_error "lies inside the checkpoint directory $old" "$MONTA" export --checkpoint "$new" --out "$old/rank_00000.h5"
    [ "$before" = "$(snapshot "$run")" ] || fail "a refused export changed the checkpoints"
    "$MONTA" export --checkpoint "$new" --out "$w/model.h5" > /dev/null 2>&1 || fail "export"
    cp "$w/model.h5" "$w/first.h5"
    expect_error "--out $w/model.h5 exists; pass --force" "$MONTA" export --checkpoint "$old" --out "$w/model.h5"
    cmp -s "$w/model.h5" "$w/first.h5" || fail "a refused export changed the existing file"
    "$MONTA" export --checkpoint "$old" --out "$w/model.h5" --force > /dev/null 2>&1 || fail "export --force"
    ! cmp -s "$w/model.h5" "$w/first.h5" || fail "--force did not replace the file"
    [ -z "$(ls "$w" | grep '\.tmp')" ] || fail "temporary files left behind" ;;
  config_after_data)
    # A run refused for its data leaves the run directory's config.ini as it was.
    echo "[model]" > "$w/fresh_config"; mkdir -p "$w/fresh"; cp "$w/fresh_config" "$w/fresh/config.ini"
    expect_error "does not exist" train "$w/fresh" --train.steps 1 --data.path "$w/none.h5"
    cmp -s "$w/fresh_config" "$w/fresh/config.ini" || fail "config.ini was rewritten before the data was validated"
    printf 'a short text of not so many bytes\n' > "$w/short.txt"
    "$MONTA" prepare-data --input "$w/short.txt" --output "$w/short.h5" > /dev/null 2>&1 || fail "prepare-data"
    # Class: misleading messages. seq_len too long for a real file names the file and its token count.
    expect_error "token file '$w/short.h5' holds 34 tokens, shorter than one sample" \
      train "$w/fresh" --train.steps 1 --data.path "$w/short.h5" --model.seq_len 64 --data.builtin_tokens 10
    cmp -s "$w/fresh_config" "$w/fresh/config.ini" || fail "config.ini was rewritten before the data was validated" ;;
  # Class: an unwritable run directory fails before step 1.
  rundir_unwritable)
    expect_error "cannot write in run directory '/proc'" train /proc --train.steps 1
    mkdir -p "$w/m/metrics.jsonl"
    out=$(expect_error "cannot open $w/m/metrics.jsonl for writing" train "$w/m" --train.steps 2) || { echo "$out"; exit 1; }
    ! grep -q "^step" <<<"$out" || fail "trained before failing"
    mkdir -p "$w/c/config.ini"
    expect_error "cannot write $w/c/config.ini" train "$w/c" --train.steps 2 ;;
  metrics_disk_full)
    # A file-size limit (as in faults.sh disk_full) that config.ini and the heartbeats fit under but metrics.jsonl
    # soon outgrows: the run stops with one line naming the file instead of training on without metrics.
    head -c 20000 "$MONTA" | od -An -tu1 | tr -s ' \n' '  ' > "$w/text.txt"
    "$MONTA" prepare-data --input "$w/text.txt" --output "$w/text.h5" > /dev/null 2>&1 || fail "prepare-data"
    expect_error "cannot write to $w/small/metrics.jsonl (disk full?)" \
      "$MPIEXEC" --allow-run-as-root -np 1 bash -c 'trap "" XFSZ; ulimit -f 4; exec "$@"' _ "$MONTA" train --config "$CFG" \
      --train.device cpu --train.run_dir "$w/small" --data.path "$w/text.h5" --train.steps 40 --train.log_interval 100 ;;
  # Class: two launches into one run directory.
  second_launch)
    "$MONTA" train --config "$CFG" --train.device cpu --train.run_dir "$w/busy" --train.steps 100000 \
      --train.log_interval 100000 > "$w/first.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do [ -s "$w/busy/metrics.jsonl" ] && break; sleep 0.1; done
    [ -s "$w/busy/metrics.jsonl" ] || { kill -9 $pid; cat "$w/first.log"; fail "first launch did not start"; }
    lines=$(wc -l < "$w/busy/metrics.jsonl")
    out=$(expect_error "run directory '$w/busy' is in use by $pid@" train "$w/busy" --train.steps 3) || {
      kill -9 $pid; echo "$out"; exit 1; }
    kill -9 $pid; wait $pid 2>/dev/null
    [ "$(wc -l < "$w/busy/metrics.jsonl")" -ge "$lines" ] || fail "metrics lost"
    ! grep -q '^{.*}{' "$w/busy/metrics.jsonl" || fail "interleaved metrics"
    # The lock dies with its holder: the next launch runs.
    train "$w/busy" --train.steps 1 > "$w/third.log" || { cat "$w/third.log"; fail "launch after the holder ended"; } ;;
  # Class: misleading messages.
  nothing_to_train)
    out=$(train "$run" --train.steps 4 --checkpoint.resume auto) || { echo "$out"; fail "exit status"; }
    grep -q "nothing to train: the checkpoint is already at step 4 and train.steps is 4" <<<"$out" || { echo "$out"; fail "no message"; } ;;
  *) fail "unknown case $case_" ;;
esac
echo "PASS: $case_"
