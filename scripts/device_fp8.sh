#!/usr/bin/env bash
# FP8 on one GPU (docs/fp8.md), binaries built with CUDA in build-cuda/bin: the FP8 tests (codec = cuda_fp8.h,
# quantise ops CUDA = CPU bit for bit, the cuBLASLt block-scaled GEMM against the CPU reference, the tiny model with
# FP8 experts on the GPU against the CPU emulation), `monta bench fp8`
# (expert GEMMs at 2x70B shapes beside bf16 and both GEMM ceilings), the 2x70B layer with fp8 none and experts, and a
# tiny training run on the GPU with fp8 none and experts from the same init. Logs and JSON go to $OUT; exit non-zero
# when anything failed. ITERS sets the benchmarks' timed iterations; SKIP_LAYER=1 skips the layer benchmark.
set -uo pipefail
BIN=${BIN:-build-cuda/bin}
OUT=${OUT:-/tmp/monta-out}
ITERS=${ITERS:-10}
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
run test_gpu_fp8 "$BIN/test_gpu" --gtest_filter='*Fp8*' --gtest_brief=1
run test_gpu_model_fp8 "$BIN/test_gpu_model" --gtest_filter='GpuFp8*' --gtest_brief=1
run test_engine_fp8 "$BIN/test_engine" --gtest_filter='*Fp8*' --gtest_brief=1
run test_model_fp8 "$BIN/test_model" --gtest_filter='Fp8*' --gtest_brief=1
run bench_fp8 "$BIN/monta" bench fp8 --iters "$ITERS" --json "$OUT/bench_fp8.json"
if [ "${SKIP_LAYER:-0}" != 1 ]; then
  run bench_layer_bf16 "$BIN/monta" bench layer --iters "$ITERS" --json "$OUT/bench_layer_bf16.json"
  run bench_layer_fp8 "$BIN/monta" bench layer --iters "$ITERS" --fp8 experts --json "$OUT/bench_layer_fp8.json"
fi
for mode in none experts; do
  run "train_tiny_fp8_$mode" "$BIN/monta" train --config configs/tiny.ini --train.device cuda --train.steps 200 \
    --train.eval_interval 0 --model.fp8 "$mode" --train.run_dir "$OUT/run_tiny_fp8_$mode"
done
python3 - "$OUT" <<'PY' | tee "$OUT/fp8_summary.txt"
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
b = load("bench_fp8.json")
if b:
    rows = {r["op"]: r for r in b["rows"]}
    print(f"GEMM ceilings: bf16 {b['gemm_bf16_tflops']:.1f} TFLOP/s, fp8 {b['gemm_fp8_tflops']:.1f} TFLOP/s "
          f"(fp8/bf16 {b['gemm_fp8_tflops'] / b['gemm_bf16_tflops']:.2f}x); fp8 forward vs bf16 rel. error {b['fp8_fwd_rel_err']:.4f}")
    for g in ("fwd", "dgrad", "wgrad"):
        bf, f8, fq = (rows.get(f"{k} {g} (gate)") for k in ("bf16", "fp8 gemm", "fp8 + quantise"))
        if bf and f8 and fq:
            print(f"expert {g:5s}: bf16 {bf['ms']:.3f} ms, fp8 gemm {f8['ms']:.3f} ms ({bf['ms'] / f8['ms']:.2f}x), "
                  f"fp8 + quantise {fq['ms']:.3f} ms ({bf['ms'] / fq['ms']:.2f}x)")
l0, l1 = load("bench_layer_bf16.json"), load("bench_layer_fp8.json")
def layer_ms(l):
    return next(r["ms"] for r in l["rows"] if r["op"].startswith("layer fwd+bwd"))
if l0 and l1:
    t0, t1 = layer_ms(l0), layer_ms(l1)
    print(f"2x70B layer fwd+bwd: bf16 experts {t0:.2f} ms, fp8 experts {t1:.2f} ms, speed-up {t0 / t1:.3f}x")
def final_loss(mode):
    p = os.path.join(out, f"run_tiny_fp8_{mode}", "metrics.jsonl")
    if not os.path.exists(p): return None
    rows = [json.loads(l) for l in open(p) if l.strip()]
    return sum(r["loss"] for r in rows[-10:]) / min(10, len(rows))
a, e = final_loss("none"), final_loss("experts")
if a and e:
    print(f"tiny on the GPU, mean loss of the last 10 of 200 steps: none {a:.4f}, experts {e:.4f} (ratio {e / a:.4f})")
PY
exit $status
