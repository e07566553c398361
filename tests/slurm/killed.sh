#!/usr/bin/env bash
# killed.sh CASE: one task of a 4-rank srun step fails and the whole step ends within the watchdog bound
# (train.step_timeout_s 5; 30 s allowed), non-zero, with a message naming the rank, and no task left running.
#   kill9: kill -9 of rank 1's process (found with scontrol listpids), a node-failure stand-in.
#   stall: rank 3 hangs at step 2 (MONTA_TEST_STALL_RANK); monta's watchdog aborts the job.
source "$(dirname "$0")/lib.sh"
slurm_up
case_=$1
w=$WORK/killed_$case_; rm -rf "$w"; mkdir -p "$w"
job=monta_killed_$$
args=(--parallel.tp 2 --parallel.ep 2 --train.step_timeout_s 5 --train.log_interval 1)
case $case_ in
  kill9)
    srun_train 4 "$job" "$w/run" "${args[@]}" --train.steps 1000 > "$w/log" &
    pid=$!
    trap 'scancel -n "$job" 2>/dev/null' EXIT
    wait_for 60 has_lines "$w/run/metrics.jsonl" 2 || { cat "$w/log"; fail "no 2 steps within 60 s"; }
    id=$(job_id "$job"); [ -n "$id" ] || fail "job $job not in squeue"
    # PID JOBID STEPID LOCALID GLOBALID: the task with global id (= MPI rank) 1.
    victim=$(scontrol listpids "$id" | awk '$5 == "1" {print $1}' | head -n 1)
    [ -n "$victim" ] || { scontrol listpids "$id"; fail "no task with rank 1"; }
    start=$(date +%s)
    show kill -9 "$victim"
    wait $pid
    rc=$?
    trap - EXIT
    phrase="task 1: Killed|rank 1" ;;
  stall)
    start=$(date +%s)
    MONTA_TEST_STALL_RANK=3 srun_train 4 "$job" "$w/run" "${args[@]}" --train.steps 4 > "$w/log"
    rc=$?
    phrase="rank [0-9]+: step 2 did not finish within 5 s" ;;
  *) fail "unknown case $case_" ;;
esac
took=$(( $(date +%s) - start ))
grep -E "^(srun|slurmstepd|monta: error)" "$w/log" | sed 's/^/  /'
[ $rc -ne 0 ] || fail "the step exited 0"
[ $rc -ne 124 ] || fail "the step was still running after 120 s"
[ $took -le 30 ] || fail "the step took $took s to end"
grep -Eq "$phrase" "$w/log" || { cat "$w/log"; fail "no message naming the rank ('$phrase')"; }
job_gone() { [ -z "$(squeue -h -n "$job" -t PD,R -o %i)" ]; }
tasks_gone() { ! pgrep -f -- "--train.run_dir $w/run" > /dev/null; }
wait_for 10 job_gone || fail "job $job still running or pending"
wait_for 10 tasks_gone || fail "a task of the step is still running"
echo "PASS: $case_: the step ended $took s after the failure (srun exit $rc), naming the rank"
