#!/usr/bin/env bash
# fixture.sh start|stop: the CTest fixture around the Slurm tests. start brings the one-host Slurm up (skipping
# with one line where it cannot start) and remembers whether it was already running; stop stops it only if
# start started it, so a cluster a developer had up stays up.
source "$(dirname "$0")/lib.sh"
marker=$WORK/slurm_started_by_tests
case $1 in
  start)
    was_up=0; "$SLURM_LOCAL" status > /dev/null 2>&1 && was_up=1
    slurm_up
    cat "$WORK/slurm_start.log"
    if [ $was_up = 0 ]; then touch "$marker"; else rm -f "$marker"; fi
    sinfo ;;
  stop)
    if [ -f "$marker" ]; then "$SLURM_LOCAL" stop; rm -f "$marker"; else echo "Slurm was up before the tests: left running"; fi ;;
  *) fail "usage: fixture.sh start|stop" ;;
esac
