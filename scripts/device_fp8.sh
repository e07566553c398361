#!/usr/bin/env bash
# FP8 on one GPU (docs/fp8.md), binaries built with CUDA in $BIN: the FP8 tests (codec = cuda_fp8.h, quantise, pack
# and fused SwiGLU ops CUDA = CPU bit for bit, the cuBLASLt block-scaled GEMM against the CPU reference, the tiny
# model with FP8 experts on the GPU against the CPU emulation; the CPU FP8 tests incl. the straight-through
# finite-difference check), `monta bench fp8` (expert GEMMs at 2x70B shapes beside bf16 and both GEMM ceilings), the
# 2x70B layer with fp8 none and experts in one run, and `bench exchange` bytes per call with bf16 and FP8 dispatch
# (4 MPI ranks on host buffers: the byte counts do not depend on the device; plus one GPU rank as a functional check
# of the FP8 dispatch on device buffers). Logs and JSON go to $OUT; exit non-zero when anything failed. About 2
# minutes on an H200. ITERS: the benchmarks' timed iterations; TRAIN=1 adds 200 tiny training steps per fp8 mode
# (none, experts, all). The layer with every FP8 mode and the cached-weight GEMM rows: scripts/device_fp8_layer.sh.
set -uo pipefail
BIN=${BIN:-.devbin}
OUT=${OUT:-/tmp/monta-out}
ITERS=${ITERS:-5}
mkdir -p "$OUT"
RUN_TAIL=25
source "$(dirname "$0")/device_lib.sh"  # gpu.txt, run(), status
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
run test_gpu_fp8 "$BIN/test_gpu" --gtest_filter='*Fp8*' --gtest_brief=1
run test_gpu_model_fp8 "$BIN/test_gpu_model" --gtest_filter='GpuFp8*' --gtest_brief=1
run test_engine_fp8 "$BIN/test_engine" --gtest_filter='*Fp8*' --gtest_brief=1
run test_model_fp8 "$BIN/test_model" --gtest_filter='Fp8*' --gtest_brief=1
run bench_fp8 "$BIN/monta" bench fp8 --iters "$ITERS" --json "$OUT/bench_fp8.json"
run bench_layer "$BIN/monta" bench layer --iters "$ITERS" --fp8 none,experts --json "$OUT/bench_layer.json"
if command -v mpirun >/dev/null; then
  run bench_exchange_bytes mpirun -np 4 "$BIN/monta" bench exchange --tp 2 --ep 2 --device cpu --hidden 8192 \
    --min-bytes 4194304 --max-bytes 4194304 --iters 2 --warmup 1 --dispatch-dtype fp8 --json "$OUT/bench_exchange.json"
else
  echo "no mpirun: bench exchange bytes skipped"
fi
run bench_exchange_gpu "$BIN/monta" bench exchange --device cuda --hidden 8192 --min-bytes 16777216 \
  --max-bytes 16777216 --iters "$ITERS" --dispatch-dtype fp8 --json "$OUT/bench_exchange_gpu.json"
if [ "${TRAIN:-0}" = 1 ]; then
  for mode in none experts all; do
    run "train_tiny_fp8_$mode" "$BIN/monta" train --config configs/tiny.ini --train.device cuda --train.steps 200 \
      --train.eval_interval 0 --model.fp8 "$mode" --train.run_dir "$OUT/run_tiny_fp8_$mode"
  done
fi
python3 - "$OUT" "$(dirname "$0")" <<'PY' | tee "$OUT/fp8_summary.txt"
import json, os, sys
sys.path.insert(0, sys.argv[2])
from fp8_summary_lib import ceilings_line, loader
out = sys.argv[1]
load = loader(out)
b = load("bench_fp8.json")
if b:
    rows = {r["op"]: r for r in b["rows"]}
    print(ceilings_line(b))
    for g in ("fwd", "dgrad", "wgrad"):
        bf, f8, fq = (rows.get(f"{k} {g} (gate)") for k in ("bf16", "fp8 gemm", "fp8 + quantise"))
        if bf and f8 and fq:
            print(f"expert {g:5s}: bf16 {bf['ms']:.3f} ms, fp8 gemm {f8['ms']:.3f} ms ({bf['ms'] / f8['ms']:.2f}x), "
                  f"fp8 + quantise {fq['ms']:.3f} ms ({bf['ms'] / fq['ms']:.2f}x)")
l = load("bench_layer.json")
if l:
    ms = {r["op"]: r["ms"] for r in l["rows"]}
    t0, t1 = ms.get("layer fwd+bwd fp8=none"), ms.get("layer fwd+bwd fp8=experts")
    if t0 and t1:
        print(f"2x70B layer fwd+bwd: bf16 experts {t0:.2f} ms, fp8 experts {t1:.2f} ms, speed-up {t0 / t1:.3f}x")
for name, what in (("bench_exchange.json", "4 CPU ranks, tp 2 ep 2"), ("bench_exchange_gpu.json", "1 GPU, functional")):
    e = load(name)
    if not e:
        continue
    for r in e["rows"]:
        if "vs_bf16" in r:
            print(f"exchange ({what}) {r['op']:16s}: {r['time_us']:10.1f} us, sent {r['sent_bytes']:.0f} B per call, "
                  f"{r['vs_bf16']:.4f} of bf16")
def final_loss(mode):
    p = os.path.join(out, f"run_tiny_fp8_{mode}", "metrics.jsonl")
    if not os.path.exists(p): return None
    rows = [json.loads(l) for l in open(p) if l.strip()]
    return sum(r["loss"] for r in rows[-10:]) / min(10, len(rows))
a, e, f = final_loss("none"), final_loss("experts"), final_loss("all")
if a and e:
    print(f"tiny on the GPU, mean loss of the last 10 of 200 steps: none {a:.4f}, experts {e:.4f} (ratio {e / a:.4f})"
          + (f", all {f:.4f} (ratio {f / a:.4f})" if f else ""))
PY
exit $status
