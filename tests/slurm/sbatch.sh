#!/usr/bin/env bash
# sbatch.sh: the README's batch script (scripts/slurm_example.sbatch) end to end on one node: 4 tasks for its
# 2 x 8, no GPUs, the tiny config on the CPU. The first job trains 2 steps; the same script submitted again
# resumes there (its --checkpoint.resume auto) and trains to step 4. Checked from the jobs' output files.
source "$(dirname "$0")/lib.sh"
slurm_up
w=$WORK/sbatch; rm -rf "$w"; mkdir -p "$w"
opts=(--wait -N 1 -n 4 --ntasks-per-node=4 --gpus-per-node=0 -D "$REPO" -J monta_sbatch)
args=(--train.device cpu --parallel.tp 2 --parallel.ep 2 --checkpoint.interval 2)
export MONTA CONFIG=$CFG RUN_DIR=$w/run
show timeout 120 sbatch "${opts[@]}" -o "$w/first.out" "$REPO/scripts/slurm_example.sbatch" "${args[@]}" --train.steps 2 ||
  { cat "$w/first.out"; fail "first job failed"; }
show timeout 120 sbatch "${opts[@]}" -o "$w/second.out" "$REPO/scripts/slurm_example.sbatch" "${args[@]}" --train.steps 4 ||
  { cat "$w/second.out"; fail "second job failed"; }
for f in first second; do grep -E "^(job [0-9]+:|step +[0-9]+ \||resumed from|done:)" "$w/$f.out" | sed "s/^/  $f.out: /"; done
grep -q "^job [0-9]*: 4 tasks on 1 node(s)" "$w/first.out" || fail "first job: not 4 tasks on 1 node"
grep -q "^parallel layout: 4 ranks = tp 2 x dp 2" "$w/first.out" || fail "first job: not one 4-rank job"
grep -q "^step *2 | loss" "$w/first.out" || fail "first job did not reach step 2"
grep -q "resumed from $(ckpt "$w/run" 2) at step 2 " "$w/second.out" || fail "second job did not resume at step 2"
grep -q "^step *4 | loss" "$w/second.out" || fail "second job did not reach step 4"
grep -q "^step *[12] | loss" "$w/second.out" && fail "second job trained steps 1-2 again"
! grep -q "^monta: error" "$w/first.out" "$w/second.out" || fail "a rank failed"
[ -f "$(ckpt "$w/run" 4)/COMPLETE" ] || fail "no step 4 checkpoint"
echo "PASS: the README's sbatch script trained 2 steps, then resumed to step 4"
