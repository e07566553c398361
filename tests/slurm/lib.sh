# Shared helpers of the Slurm tests: the resume tests' helpers (fail, losses, ckpt, train_np), the one-host Slurm
# of scripts/slurm_local.sh (started if needed; the tests skip with one line only where it cannot start: not root
# or Slurm not installed) and an srun wrapper that prints the command it runs.
source "$(dirname "${BASH_SOURCE[0]}")/../resume/lib.sh"
: "${REPO:?}"
SLURM_LOCAL=$REPO/scripts/slurm_local.sh
# 4 ranks on 2 cores: Open MPI under srun does not know the node is oversubscribed (mpirun --oversubscribe tells
# it), so it would spin in every wait; yielding keeps a step at mpirun's speed.
export OMPI_MCA_mpi_yield_when_idle=1

slurm_up() {
  if [ "$(id -u)" != 0 ]; then echo "SKIP: Slurm cannot start: the one-host cluster needs root (slurmd)"; exit 77; fi
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v srun >/dev/null ||
     ! command -v munged >/dev/null; then
    echo "SKIP: Slurm cannot start: slurmctld/slurmd/slurm-client/munge not installed (scripts/setup.sh installs them)"
    exit 77
  fi
  "$SLURM_LOCAL" start > "$WORK/slurm_start.log" 2>&1 || { cat "$WORK/slurm_start.log"; fail "Slurm did not start"; }
  eval "$("$SLURM_LOCAL" env)"
}

# show CMD...: print the command on the test's own output (fd 3, whatever CMD's output is redirected to), so the
# test log shows what srun/sbatch ran, then run it.
exec 3>&1
show() { echo "+ $*" >&3; "$@"; }

# srun_train NP JOB RUN_DIR ARGS...: NP ranks of monta train through srun --mpi=pmix as job JOB, output to stdout.
srun_train() {
  local np=$1 job=$2 dir=$3; shift 3
  show timeout 120 srun --mpi=pmix -n "$np" -J "$job" "$MONTA" train --config "$CFG" --train.device cpu \
    --train.run_dir "$dir" "$@" 2>&1
}

# metrics_exact METRICS: the deterministic fields of every metrics line (timings differ between runs).
metrics_exact() {
  python3 - "$1" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    if l.strip():
        r = json.loads(l)
        print(*(r[k] for k in ("step", "loss", "aux_loss", "z_loss", "grad_norm", "lr", "dropped", "skipped")))
PY
}

# job_id NAME: the id of the running job called NAME (empty if none).
job_id() { squeue -h -n "$1" -o %i | head -n 1; }

# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds; non-zero after SECONDS.
wait_for() {
  local n=$(($1 * 10)); shift
  for _ in $(seq 1 "$n"); do "$@" && return 0; sleep 0.1; done
  return 1
}
metrics_lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
has_lines() { [ "$(metrics_lines "$1")" -ge "$2" ]; }
