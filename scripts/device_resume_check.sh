#!/usr/bin/env bash
# GPU resume check (device machine): tiny config on CUDA, 6 steps straight vs 3 + resume + 3 must give identical
# metrics (17 digits) and byte-identical exported weights; then the save/load time and size of a larger model's
# checkpoint on the GPU. Binaries in $BIN (built here), logs in $OUT.
set -uo pipefail
BIN=${BIN:-build-cuda/bin}
OUT=${OUT:-/tmp/monta-out}
W=/tmp/resume_gpu
rm -rf "$W"; mkdir -p "$OUT"
M="$BIN/monta"
common=(--config configs/tiny.ini --train.device cuda --train.log_interval 100)
"$M" train "${common[@]}" --train.run_dir $W/straight --train.steps 6 --checkpoint.interval 6 > $OUT/straight.log 2>&1
"$M" train "${common[@]}" --train.run_dir $W/split --train.steps 3 --checkpoint.interval 3 > $OUT/split1.log 2>&1
"$M" train "${common[@]}" --train.run_dir $W/split --train.steps 6 --checkpoint.interval 3 --checkpoint.resume auto \
  > $OUT/split2.log 2>&1
grep resumed $OUT/split2.log
strip() { python3 -c 'import json,sys; [print(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, open(sys.argv[1]))]' "$1"; }
if diff <(strip $W/straight/metrics.jsonl) <(strip $W/split/metrics.jsonl); then echo "GPU resume: metrics identical"; else echo "GPU resume: METRICS DIFFER"; fi
"$M" export --checkpoint $W/straight/checkpoints/step_00000006 --out $W/a.h5 > /dev/null
"$M" export --checkpoint $W/split/checkpoints/step_00000006 --out $W/b.h5 > /dev/null
if cmp -s $W/a.h5 $W/b.h5; then echo "GPU resume: exported weights byte-identical"; else echo "GPU resume: WEIGHTS DIFFER"; fi
# A larger model: save at step 1, then resume (load) it.
big=(--config configs/tiny.ini --train.device cuda --model.vocab 32000 --model.hidden 2048 --model.layers 4
     --model.heads 16 --model.kv_heads 4 --model.ffn 8192 --model.seq_len 1024 --train.micro_batch 1 --train.global_batch 4)
"$M" train "${big[@]}" --train.run_dir $W/big --train.steps 1 --checkpoint.interval 1 2>&1 | grep -E "model:|saved|step" | tee $OUT/big_save.log
"$M" train "${big[@]}" --train.run_dir $W/big --train.steps 2 --checkpoint.interval 100 --checkpoint.resume auto 2>&1 | grep -E "resumed|step" | tee $OUT/big_load.log
du -sh $W/big/checkpoints/* | tee -a $OUT/big_save.log
