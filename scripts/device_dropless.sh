#!/usr/bin/env bash
# Dropless routing on one GPU (docs/design.md, Dropless routing), binaries built with CUDA in $BIN: the GPU-against-CPU
# model test with dropless routing under a skewed router, the CPU dropless tests of the same build, and `monta bench
# layer --dropless` at 2x70B widths (E 2, top-1) with a balanced and a skewed router: the capacity-1.0 layer and the
# dropless layer in one run each, with routed and processed choices, the measured load imbalance (max / mean) and the
# time per processed choice (the issue's yardstick: dropless within 5% of capacity 1.0 per choice when balanced).
# Logs, JSON and a summary go to $OUT; exit non-zero when anything failed. ~60-90 s on an H200.
set -uo pipefail
BIN=${BIN:-.devbin}
OUT=${OUT:-/tmp/monta-out}
ITERS=${ITERS:-5}
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
run() {  # run NAME CMD...: tee to $OUT/NAME.log, remember a failure
  local name=$1
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 25
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "$name FAILED"; status=1; }
}
run test_gpu_model_dropless "$BIN/test_gpu_model" --gtest_filter='GpuDropless*:GpuModel.LossAndGradientsMatchCpu' --gtest_brief=1
run test_model_dropless "$BIN/test_model" --gtest_filter='*Dropless*' --gtest_brief=1
for router in balanced skewed; do
  run "bench_layer_dropless_$router" "$BIN/monta" bench layer --iters "$ITERS" --dropless --router "$router" \
    --json "$OUT/bench_layer_dropless_$router.json"
done
python3 - "$OUT" <<'PY' | tee "$OUT/dropless_summary.txt"
import json, os, sys
out = sys.argv[1]
for router in ("balanced", "skewed"):
    p = os.path.join(out, f"bench_layer_dropless_{router}.json")
    if not os.path.exists(p):
        continue
    r = json.load(open(p))["routing"]
    cap = next((v for k, v in r.items() if "dropless" not in k), None)
    dl = next((v for k, v in r.items() if "dropless" in k), None)
    if not cap or not dl:
        continue
    print(f"router {router}: capacity 1.0 {cap['ms']:.2f} ms, {cap['processed']}/{cap['routed']} choices processed, "
          f"{cap['ns_per_processed_choice']:.2f} ns each; dropless {dl['ms']:.2f} ms, {dl['processed']} processed, "
          f"{dl['ns_per_processed_choice']:.2f} ns each (ratio {dl['ns_per_processed_choice'] / cap['ns_per_processed_choice']:.3f}); "
          f"imbalance max/mean {dl['imbalance']:.3f}")
PY
exit $status
