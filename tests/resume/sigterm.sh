#!/usr/bin/env bash
# sigterm.sh: SIGTERM to a running single-rank job finishes the step, saves it, exits 0; resume continues there.
source "$(dirname "$0")/lib.sh"
w=$WORK/sigterm; rm -rf "$w"; mkdir -p "$w"
"$MONTA" train --config "$CFG" --train.device cpu --train.run_dir "$w/run" ${ASYNC[@]+"${ASYNC[@]}"} --train.steps 1000 --train.log_interval 100 \
  > "$w/term.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  [ -f "$w/run/metrics.jsonl" ] && [ "$(wc -l < "$w/run/metrics.jsonl")" -ge 2 ] && break
  sleep 0.1
done
kill -TERM $pid
wait $pid
rc=$?
[ $rc -eq 0 ] || { cat "$w/term.log"; fail "exit status $rc after SIGTERM"; }
n=$(sed -n 's/^SIGTERM: saved at step \([0-9]*\), exiting$/\1/p' "$w/term.log")
[ -n "$n" ] || { cat "$w/term.log"; fail "no 'SIGTERM: saved' line"; }
[ "$n" -lt 1000 ] || fail "ran to the end"
[ -f "$(ckpt "$w/run" "$n")/COMPLETE" ] || fail "no checkpoint at step $n"
[ "$(wc -l < "$w/run/metrics.jsonl")" -eq "$n" ] || fail "metrics lines != $n"
train "$w/run" --train.steps $((n + 2)) --checkpoint.resume auto > "$w/resume.log" || { cat "$w/resume.log"; fail "resume"; }
grep -q "resumed from $(ckpt "$w/run" "$n") at step $n" "$w/resume.log" || fail "did not resume at step $n"
grep -q "^step *$((n + 2)) | loss" "$w/resume.log" || fail "did not reach step $((n + 2))"
echo "PASS: SIGTERM at step $n saved and resumed"
