#!/usr/bin/env bash
# placement.sh: the rank and local rank monta uses (the local rank picks the GPU) are Slurm's under srun
# (rank = SLURM_PROCID, local rank = SLURM_LOCALID) and Open MPI's under salloc + mpirun
# (OMPI_COMM_WORLD_LOCAL_RANK), every rank exactly once.
source "$(dirname "$0")/lib.sh"
slurm_up
w=$WORK/placement; rm -rf "$w"; mkdir -p "$w"
args=(--config "$CFG" --train.device cpu --parallel.tp 2 --parallel.ep 2 --train.steps 1)
# check DIR VAR: every rank's "placement:" line (DIR/placement.<rank>, one file per rank so that no line is lost to
# interleaved output) has rank = its SLURM_PROCID (srun only) and local rank = VAR's value.
check() {
  local dir=$1 var=$2 lines
  lines=$(cat "$dir"/placement.* 2>/dev/null) || fail "no placement files in $dir"
  echo "$lines"
  [ "$(wc -l <<<"$lines")" -eq 4 ] || fail "expected 4 placement lines"
  [ "$(sed 's/.*placement: rank \([0-9]*\) of.*/\1/' <<<"$lines" | sort | tr '\n' ' ')" = "0 1 2 3 " ] || fail "ranks are not 0..3"
  local re='placement: rank ([0-9]+) of 4, local rank ([0-9]+) on [^ ]+ \(OMPI_COMM_WORLD_LOCAL_RANK ([^,]+), SLURM_PROCID ([^,]+), SLURM_LOCALID ([^)]+)\)'
  local l
  while read -r l; do
    [[ $l =~ $re ]] || fail "unreadable placement line: $l"
    local rank=${BASH_REMATCH[1]} local_rank=${BASH_REMATCH[2]} ompi=${BASH_REMATCH[3]} procid=${BASH_REMATCH[4]}
    local localid=${BASH_REMATCH[5]}
    if [ "$var" = SLURM_LOCALID ]; then
      [ "$local_rank" = "$localid" ] && [ "$rank" = "$procid" ] || fail "srun: rank/local rank disagree with Slurm's: $l"
    else
      [ "$local_rank" = "$ompi" ] || fail "mpirun: local rank disagrees with OMPI_COMM_WORLD_LOCAL_RANK: $l"
    fi
  done <<<"$lines"
}
mkdir -p "$w/srun.placement" "$w/salloc.placement"
MONTA_TEST_PLACEMENT=$w/srun.placement show timeout 120 srun --mpi=pmix -n 4 -J monta_placement "$MONTA" train \
  "${args[@]}" --train.run_dir "$w/srun" > "$w/srun.log" 2>&1 || { cat "$w/srun.log"; fail "srun run"; }
check "$w/srun.placement" SLURM_LOCALID
MONTA_TEST_PLACEMENT=$w/salloc.placement show timeout 120 salloc -n 4 -J monta_placement "$MPIEXEC" --allow-run-as-root "$MONTA" train \
  "${args[@]}" --train.run_dir "$w/salloc" > "$w/salloc.log" 2>&1 || { cat "$w/salloc.log"; fail "salloc + mpirun run"; }
check "$w/salloc.placement" OMPI_COMM_WORLD_LOCAL_RANK
echo "PASS: monta's rank and local rank are SLURM_PROCID/SLURM_LOCALID under srun, Open MPI's under salloc + mpirun"
