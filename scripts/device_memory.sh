#!/usr/bin/env bash
# The memory table on the device machine (binaries built here with CUDA, carried in BIN): the GPU model tests
# (recompute = none bit for bit, memory within 10% of the prediction), then 2x70B-width models of LAYERS layers at
# seq 8192, global batch 16, micro-batch 1, for each option set in OPTIONS: predicted and measured GPU memory, step
# time and MFU of the steps after the first. Writes logs and memory_table.md under OUT.
set -uo pipefail
BIN=${BIN:-build/bin}
OUT=${OUT:-/tmp/monta-out}
LAYERS=${LAYERS:-"4"}
STEPS=${STEPS:-3}
OPTIONS=${OPTIONS:-"recompute=none recompute=selective recompute=full"}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
status=0
if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== test_gpu_model"
  "$BIN/test_gpu_model" --gtest_brief=1 2>&1 | tee "$OUT/test_gpu_model.log" | grep -E "recompute|FAILED|PASSED|Failure" 
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "test_gpu_model FAILED"; status=1; }
fi
table="$OUT/memory_table.md"
echo "| layers | options | predicted GiB | measured GiB | step s (median after step 1) | MFU |" > "$table"
echo "|---|---|---|---|---|---|" >> "$table"
for L in $LAYERS; do
  for opt in $OPTIONS; do
    # opt: comma-separated key=value pairs of the train section, e.g. recompute=full,optimizer_offload=true
    args=()
    IFS=, read -ra kvs <<< "$opt"
    for kv in "${kvs[@]}"; do args+=("--train.${kv%%=*}" "${kv#*=}"); done
    name="L${L}_${opt//[=,]/_}"
    echo "== $name"
    "$BIN/monta" train --config configs/layer2x70b.ini --model.layers "$L" --train.global_batch 16 \
      --train.micro_batch 1 --train.steps "$STEPS" --train.eval_steps 0 --train.run_dir "/tmp/mem_$name" \
      --checkpoint.overwrite true "${args[@]}" > "$OUT/$name.log" 2>&1
    rc=$?
    grep -E "per rank|memory:|step +[0-9]+ |error|out of GPU" "$OUT/$name.log" | head -12
    python3 - "$OUT/$name.log" "/tmp/mem_$name/metrics.jsonl" "$L" "$opt" "$rc" >> "$table" <<'EOF'
import json, re, statistics, sys
log, metrics, layers, opt, rc = sys.argv[1:]
text = open(log).read()
pred = re.search(r"predicted ([0-9.]+) GiB", text)
meas = re.search(r"memory: ([0-9.]+) GiB of GPU memory added", text)
dry = re.search(r"in all", text)
rows = []
try:
    rows = [json.loads(l) for l in open(metrics)]
except OSError:
    pass
later = rows[1:] or rows
step = statistics.median(r["step_ms"] for r in later) / 1000 if later else float("nan")
mfu = statistics.median(r["mfu"] for r in later) if later else float("nan")
oom = "out of GPU memory" in text
print(f"| {layers} | {opt} | {pred.group(1) if pred else '-'} | {meas.group(1) if meas else ('OOM' if oom else 'rc ' + rc)} "
      f"| {step:.2f} | {mfu:.3f} |")
EOF
  done
done
cat "$table"
exit $status
