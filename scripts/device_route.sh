#!/usr/bin/env bash
# Routing options on one GPU (issue 18 parts 2 and 3; docs/design.md, "Routing options"), binaries built with CUDA
# in $BIN: the router kernels against the CPU (biased top-k exact, renormalised weights forward and backward, the
# op-case parity of topk_weights_norm), the tiny model with both options on the GPU against the CPU, and a short tiny
# run on the GPU with both on (its load_max per step in the log). About a minute on an H200. Logs go to $OUT; exit
# non-zero when anything failed.
set -uo pipefail
BIN=${BIN:-.devbin}
OUT=${OUT:-/tmp/monta-out}
mkdir -p "$OUT"
RUN_TAIL=25
source "$(dirname "$0")/device_lib.sh"  # gpu.txt, run(), status
run test_gpu_router "$BIN/test_gpu" --gtest_filter='*GpuRouter*:*OpParity*topk_weights*' --gtest_brief=1
run test_gpu_model_routing "$BIN/test_gpu_model" --gtest_filter='GpuModel.RoutingOptionsMatchCpu' --gtest_brief=1
run train_tiny_route "$BIN/monta" train --config configs/tiny.ini --train.device cuda --train.steps 60 \
  --train.eval_interval 0 --model.router_bias_update 0.01 --model.router_norm_topk true --train.log_interval 10 \
  --train.run_dir "$OUT/run_tiny_route"
python3 - "$OUT/run_tiny_route/metrics.jsonl" <<'PY' | tee "$OUT/route_summary.txt" || status=1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows[::10] + rows[-1:]:
    print(f"step {r['step']:3d} loss {r['loss']:.4f} load_max {r['load_max']:.3f} load_min {r['load_min']:.3f}")
assert len(rows) == 60 and all(r["load_max"] >= 1 >= r["load_min"] for r in rows)
PY
exit $status
