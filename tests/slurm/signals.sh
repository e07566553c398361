#!/usr/bin/env bash
# signals.sh: Slurm's signals reach every rank of an srun step. `scancel --signal=USR1` mid-run: the job saves a
# checkpoint and trains on; `scancel` (SIGTERM): it saves again and exits 0. `srun ... --checkpoint.resume auto`
# then continues from there and matches an uninterrupted run (metrics and export, bit for bit).
source "$(dirname "$0")/lib.sh"
slurm_up
w=$WORK/signals; rm -rf "$w"; mkdir -p "$w"
job=monta_signals_$$
# decay_steps fixed, so the LR schedule does not depend on train.steps (the runs below stop at different steps).
common=(--parallel.tp 2 --parallel.ep 2 --train.decay_steps 1000 --train.log_interval 1)
srun_train 4 "$job" "$w/run" "${common[@]}" --train.steps 1000 > "$w/signals.log" &
pid=$!
trap 'scancel -n "$job" 2>/dev/null' EXIT
wait_for 60 has_lines "$w/run/metrics.jsonl" 2 || { cat "$w/signals.log"; fail "no 2 steps within 60 s"; }
id=$(job_id "$job"); [ -n "$id" ] || fail "job $job not in squeue"
show scancel --signal=USR1 "$id"
first_ckpt() { ls -d "$w"/run/checkpoints/step_*/COMPLETE 2>/dev/null | head -n 1; }
has_ckpt() { [ -n "$(first_ckpt)" ]; }
wait_for 60 has_ckpt || { cat "$w/signals.log"; fail "no checkpoint within 60 s of SIGUSR1"; }
n1=$(basename "$(dirname "$(first_ckpt)")"); n1=$((10#${n1#step_}))
echo "SIGUSR1: checkpoint at step $n1"
wait_for 60 has_lines "$w/run/metrics.jsonl" $((n1 + 2)) || { cat "$w/signals.log"; fail "did not go on after SIGUSR1"; }
kill -0 $pid 2>/dev/null || fail "srun ended after SIGUSR1"
show scancel "$id"
wait $pid
rc=$?
trap - EXIT
grep -E "^(srun|slurmstepd)" "$w/signals.log" | sed 's/^/  /'
n2=$(sed -n 's/^SIGTERM: saved at step \([0-9]*\), exiting$/\1/p' "$w/signals.log")
[ -n "$n2" ] || { cat "$w/signals.log"; fail "no 'SIGTERM: saved' line (srun exit $rc)"; }
echo "SIGTERM: saved at step $n2 (srun exit $rc)"
! grep -q "^monta: error" "$w/signals.log" || { cat "$w/signals.log"; fail "a rank failed"; }
[ "$n2" -gt $((n1 + 1)) ] || fail "SIGTERM step $n2 not after the SIGUSR1 step $n1"
[ -f "$(ckpt "$w/run" "$n1")/COMPLETE" ] && [ -f "$(ckpt "$w/run" "$n2")/COMPLETE" ] || fail "checkpoints $n1 and $n2 not both complete"
[ "$(metrics_lines "$w/run/metrics.jsonl")" -eq "$n2" ] || fail "metrics lines != $n2"
end=$((n2 + 2))
srun_train 4 "$job" "$w/run" "${common[@]}" --train.steps $end --checkpoint.interval $end --checkpoint.resume auto \
  > "$w/resume.log" || { cat "$w/resume.log"; fail "resume"; }
grep "resumed from" "$w/resume.log"
grep -q "resumed from $(ckpt "$w/run" "$n2") at step $n2 " "$w/resume.log" || fail "did not resume at step $n2"
srun_train 4 "$job" "$w/straight" "${common[@]}" --train.steps $end --checkpoint.interval $end > "$w/straight.log" ||
  { cat "$w/straight.log"; fail "uninterrupted run"; }
diff <(metrics_exact "$w/straight/metrics.jsonl") <(metrics_exact "$w/run/metrics.jsonl") || fail "metrics differ"
"$MONTA" export --checkpoint "$(ckpt "$w/run" $end)" --out "$w/resumed.h5" > /dev/null 2>&1 || fail "export resumed"
"$MONTA" export --checkpoint "$(ckpt "$w/straight" $end)" --out "$w/straight.h5" > /dev/null 2>&1 || fail "export straight"
cmp "$w/resumed.h5" "$w/straight.h5" || fail "exports differ"
echo "step $end: loss $(loss_at "$w/run/metrics.jsonl" $end) resumed = $(loss_at "$w/straight/metrics.jsonl" $end) uninterrupted"
echo "PASS: USR1 saved at step $n1 and went on; SIGTERM saved at step $n2 and ended; resume to $end = uninterrupted"
