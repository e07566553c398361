#!/usr/bin/env bash
# Start-up at 70B scale on the device machine (binaries built here with CUDA, carried in build/bin): the GPU tests
# (the weight init must equal the CPU's bits), a short tiny-config GPU run, and the time from launch to the first
# step of 2x70B-width models of LAYERS layers (each 1.57 B parameters at vocab 512), with every start-up phase.
set -uo pipefail
BIN=${BIN:-build/bin}
OUT=${OUT:-/tmp/monta-out}
LAYERS=${LAYERS:-"2 4"}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
status=0
for t in test_gpu test_gpu_model; do
  [ -x "$BIN/$t" ] || continue
  echo "== $t"
  "$BIN/$t" --gtest_brief=1 2>&1 | tee "$OUT/$t.log" | tail -n 6
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "$t FAILED"; status=1; }
done
echo "== train tiny on cuda"
"$BIN/monta" train --config configs/tiny.ini --train.device cuda --train.steps 100 --train.log_interval 50 \
  --train.run_dir /tmp/tiny_gpu 2>&1 | tee "$OUT/train_tiny_gpu.log" | grep -E "step +(50|100)|start-up: first|error" || status=1
for L in $LAYERS; do
  echo "== start-up, 2x70B widths, $L layers"
  /usr/bin/time -f "wall %e s, max RSS %M KiB" "$BIN/monta" train --config configs/layer2x70b.ini --model.layers "$L" \
    --model.vocab 512 --train.global_batch 2 --train.micro_batch 1 --train.steps 2 --train.run_dir "/tmp/startup_$L" \
    2>&1 | tee "$OUT/startup_L$L.log" | grep -E "model:|start-up|step +[12] |wall|error" || status=1
done
exit $status
