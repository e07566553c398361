#!/usr/bin/env bash
# equal.sh: `srun -n 4 --mpi=pmix` of the tiny config with tp 2 x ep 2 trains exactly as `mpirun -np 4`: the same
# metrics (every deterministic field, all 17 digits), byte-identical checkpoint shards and `monta export`.
source "$(dirname "$0")/lib.sh"
slurm_up
w=$WORK/equal; rm -rf "$w"; mkdir -p "$w"
common=(--parallel.tp 2 --parallel.ep 2 --train.steps 4 --checkpoint.interval 4 --train.log_interval 1)
srun_train 4 monta_equal "$w/srun" "${common[@]}" > "$w/srun.log" || { cat "$w/srun.log"; fail "srun run"; }
grep -q "^parallel layout: 4 ranks = tp 2 x dp 2" "$w/srun.log" || { cat "$w/srun.log"; fail "srun did not start one 4-rank job"; }
echo "+ $MPIEXEC --allow-run-as-root --oversubscribe -np 4 $MONTA train ... (the same options)"
train_np 4 "$w/mpirun" "${common[@]}" > "$w/mpirun.log" || { cat "$w/mpirun.log"; fail "mpirun run"; }
echo "step loss aux_loss z_loss grad_norm lr dropped skipped (srun | mpirun):"
paste -d'|' <(metrics_exact "$w/srun/metrics.jsonl") <(metrics_exact "$w/mpirun/metrics.jsonl")
diff <(metrics_exact "$w/srun/metrics.jsonl") <(metrics_exact "$w/mpirun/metrics.jsonl") || fail "metrics differ"
[ "$(metrics_exact "$w/srun/metrics.jsonl" | wc -l)" -eq 4 ] || fail "expected 4 metrics lines"
diff <(grep '^file\.' "$(ckpt "$w/srun" 4)/manifest.txt") <(grep '^file\.' "$(ckpt "$w/mpirun" 4)/manifest.txt") ||
  fail "checkpoint shards differ (size/checksum)"
"$MONTA" export --checkpoint "$(ckpt "$w/srun" 4)" --out "$w/srun.h5" > /dev/null 2>&1 || fail "export srun"
"$MONTA" export --checkpoint "$(ckpt "$w/mpirun" 4)" --out "$w/mpirun.h5" > /dev/null 2>&1 || fail "export mpirun"
cmp "$w/srun.h5" "$w/mpirun.h5" || fail "exports differ"
echo "export: $(md5sum < "$w/srun.h5" | cut -c1-32) (srun) = $(md5sum < "$w/mpirun.h5" | cut -c1-32) (mpirun), $(stat -c %s "$w/srun.h5") bytes"
echo "PASS: srun -n 4 --mpi=pmix equals mpirun -np 4 bit for bit (tp 2, ep 2, 4 steps)"
