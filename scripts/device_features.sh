#!/usr/bin/env bash
# device_features.sh: one short GPU session (about 3 minutes on an H200) that checks this round's features on the
# device: the new CUDA ops and GPU model tests against the CPU (FP8 pack/unpack and fused SwiGLU, biased top-k and
# renormalised weights, sequence-parallel slots, dropless, offload with the per-group gradient copies), the 2x70B-width
# layer with dropless routing beside capacity 1.0 (balanced router) and with FP8 experts beside bf16, and over NCCL with
# a node per rank on one GPU: sequence parallelism against off, ZeRO-1 (all-gathers overlapping the next forward)
# against zero 0. Longer per-feature scripts: device_sp.sh, device_dropless.sh, device_fp8.sh, device_route.sh.
#   BIN=.devbin OUT=$OUT bash scripts/device_features.sh
set -uo pipefail
BIN=${BIN:-.devbin}
OUT=${OUT:-/tmp/monta-out}
ITERS=${ITERS:-5}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
RUN_TAIL=6
RUN_TIMEOUT=150
source "$(dirname "$0")/device_lib.sh"  # gpu.txt, run(), status
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none"
run test_gpu_new "$BIN/test_gpu" --gtest_filter='*Fp8*:*GpuRouter*:*OpParity*topk_weights*:*RouterSp*' --gtest_brief=1
run test_gpu_model "$BIN/test_gpu_model" --gtest_brief=1
run bench_layer_dropless "$BIN/monta" bench layer --iters "$ITERS" --strategies duplicate --dropless --router balanced \
  --json "$OUT/bench_layer_dropless_balanced.json"
run bench_layer_fp8 "$BIN/monta" bench layer --iters "$ITERS" --strategies duplicate --fp8 none,experts \
  --json "$OUT/bench_layer_fp8.json"
# Tiny model over NCCL, a node per rank: every step's loss, feature on against off.
train() {  # train NAME NP ARGS...
  local name=$1 np=$2
  shift 2
  run "train_$name" $MPI -np "$np" "$BIN/monta" train --config configs/tiny.ini --train.device cuda \
    --train.steps "$STEPS" --train.log_interval 1 --train.eval_steps 0 --train.run_dir "$OUT/run_$name" \
    --comm.emulate_nodes "$np" "$@"
  rm -rf "$OUT/run_$name"
}
train tp2_off 2 --parallel.tp 2
train tp2_sp 2 --parallel.tp 2 --parallel.sequence_parallel true
train tp2ep2_off 4 --parallel.tp 2 --parallel.ep 2 --comm.exchange overlapped
train tp2ep2_sp 4 --parallel.tp 2 --parallel.ep 2 --comm.exchange overlapped --parallel.sequence_parallel true
train dp2_zero0 2 --train.zero 0
train dp2_zero1 2 --train.zero 1
train route 1 --model.router_bias_update 0.01 --model.router_norm_topk true
python3 - "$OUT" <<'PY' | tee "$OUT/features_summary.txt" || status=1
import json, os, re, sys
out = sys.argv[1]
def losses(name):
    p = os.path.join(out, f"train_{name}.log")
    return [float(m.group(1)) for m in re.finditer(r"step +\d+ \| loss ([0-9.]+)", open(p).read())] if os.path.exists(p) else []
ok = True
for off, on, tol in (("tp2_off", "tp2_sp", 5e-3), ("tp2ep2_off", "tp2ep2_sp", 5e-3), ("dp2_zero0", "dp2_zero1", 1e-3)):
    a, b = losses(off), losses(on)
    d = max((abs(x - y) / abs(x) for x, y in zip(a, b)), default=float("nan"))
    good = len(a) == len(b) > 0 and d <= tol
    ok &= good
    print(f"{on} against {off}: {len(b)} steps, max relative loss difference {d:.2e} (bound {tol:g}) -> {'ok' if good else 'FAIL'}")
def rows(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
d = rows("bench_layer_dropless_balanced.json")
if d:
    r = d["routing"]
    cap = next((v for k, v in r.items() if "dropless" not in k), None)
    dl = next((v for k, v in r.items() if "dropless" in k), None)
    if cap and dl:
        ratio = dl["ns_per_processed_choice"] / cap["ns_per_processed_choice"]
        print(f"dropless (balanced router): capacity 1.0 {cap['ms']:.2f} ms, {cap['processed']}/{cap['routed']} choices, "
              f"{cap['ns_per_processed_choice']:.2f} ns each; dropless {dl['ms']:.2f} ms, {dl['processed']} choices, "
              f"{dl['ns_per_processed_choice']:.2f} ns each: ratio {ratio:.3f} (target within 5%), "
              f"imbalance max/mean {dl['imbalance']:.3f}")
f = rows("bench_layer_fp8.json")
if f:
    ms = {x["op"]: x["ms"] for x in f["rows"]}
    t0 = next((v for k, v in ms.items() if k.startswith("layer fwd+bwd") and k.endswith("fp8=none")), None)
    t1 = next((v for k, v in ms.items() if k.startswith("layer fwd+bwd") and k.endswith("fp8=experts")), None)
    if t0 and t1:
        print(f"2x70B layer fwd+bwd: bf16 {t0:.2f} ms, FP8 experts {t1:.2f} ms: {t0 / t1:.3f}x")
sys.exit(0 if ok else 1)
PY
echo "device_features: exit $status"
exit $status
