#!/usr/bin/env bash
# The FP8 layer on one GPU (docs/fp8.md), binaries built with CUDA in $BIN: what the cached weight codes,
# model.fp8_wgrad and model.fp8 = all buy. `monta bench fp8` (the expert GEMMs at 2x70B shapes: bf16, FP8 GEMM alone,
# FP8 quantising every operand, FP8 with the weight codes cached) and the 2x70B layer in one `bench layer` run with
# model.fp8 none / experts / experts with bf16 wgrad / all / all with bf16 wgrad; first the GPU FP8 op and model tests (the
# kernels, the cached codes and `all` against the CPU emulation). JSON, logs and fp8_layer_summary.txt (the ratios) go to $OUT;
# exit non-zero when anything failed. Under 4 minutes on an H200 at ITERS=5.
set -uo pipefail
BIN=${BIN:-build/bin}
OUT=${OUT:-/tmp/monta-out}
ITERS=${ITERS:-5}
MODES=${MODES:-none,experts,experts:bf16-wgrad,all,all:bf16-wgrad}
BREAKDOWN=${BREAKDOWN:-}  # modes to time op by op (bench layer --breakdown), e.g. none,experts
mkdir -p "$OUT"
RUN_TAIL=30
source "$(dirname "$0")/device_lib.sh"  # gpu.txt, run(), status
run test_gpu_fp8 "$BIN/test_gpu" --gtest_filter='*Fp8*' --gtest_brief=1
run test_gpu_model_fp8 "$BIN/test_gpu_model" --gtest_filter='GpuFp8*:GpuDropless*' --gtest_brief=1
run bench_fp8 "$BIN/monta" bench fp8 --iters "$ITERS" --json "$OUT/bench_fp8.json"
run bench_layer "$BIN/monta" bench layer --iters "$ITERS" \
  --fp8 "$MODES" --json "$OUT/bench_layer.json"
[ -z "$BREAKDOWN" ] || run bench_layer_breakdown "$BIN/monta" bench layer --iters 2 --fp8 "$BREAKDOWN" --breakdown \
  --json "$OUT/bench_layer_breakdown.json"
python3 - "$OUT" "$(dirname "$0")" <<'PY' | tee "$OUT/fp8_layer_summary.txt"
import sys
sys.path.insert(0, sys.argv[2])
from fp8_summary_lib import ceilings_line, loader
load = loader(sys.argv[1])
b = load("bench_fp8.json")
if b:
    rows = {r["op"]: r["ms"] for r in b["rows"]}
    print(ceilings_line(b))
    print("expert GEMM (gate, 2x70B)   bf16 ms | fp8 gemm alone | fp8 + quantise all | fp8 + quantise x, cached w")
    for g in ("fwd", "dgrad", "wgrad"):
        bf = rows.get(f"bf16 {g} (gate)")
        cols = [rows.get(f"fp8 gemm {g} (gate)"), rows.get(f"fp8 + quantise {g} (gate)"),
                rows.get(f"fp8 + quantise x, cached w {g}")]
        cells = [f"{c:7.3f} ({bf / c:.2f}x)" if c and bf else "      -        " for c in cols]
        print(f"  {g:6s} {bf:21.3f} | " + " | ".join(cells))
l = load("bench_layer.json")
if l:
    ms = {r["op"]: r["ms"] for r in l["rows"]}
    base = ms.get("layer fwd+bwd fp8=none")
    for mode in ("none", "experts", "experts:bf16-wgrad", "all", "all:bf16-wgrad"):
        for kind in ("layer fwd+bwd", "layer fwd only"):
            t = ms.get(f"{kind} fp8={mode}")
            ref = ms.get(f"{kind} fp8=none")
            if t and ref:
                print(f"2x70B {kind:13s} fp8={mode:19s} {t:8.2f} ms  {ref / t:.3f}x of bf16")
PY
exit $status
