#!/usr/bin/env bash
# The layer against its yardsticks on one GPU, in one session (device machine, binaries in build-cuda/bin):
# `monta bench layer --breakdown`, the same layer in plain PyTorch eager (scripts/torch_layer_ref.py), monta again
# (drift check), with the card's SM clock, power and temperature sampled every 100 ms throughout
# ($OUT/telemetry.csv) and summarised per phase ($OUT/telemetry_summary.txt). SKIP_TESTS=1 skips the GPU tests.
set -uo pipefail
BIN=${BIN:-build-cuda/bin}
OUT=${OUT:-/tmp/monta-out}
ITERS=${ITERS:-10}
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,power.limit,power.max_limit,clocks.max.sm,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  for t in test_gpu test_gpu_model; do
    echo "== $t"
    "$BIN/$t" --gtest_brief=1 2>&1 | tee "$OUT/$t.log" | tail -n 6
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "$t FAILED"; status=1; }
  done
fi
fields=timestamp,clocks.sm,power.draw,temperature.gpu,utilization.gpu
nvidia-smi --query-gpu=$fields,clocks_event_reasons.active --format=csv,noheader,nounits -lms 100 \
  >"$OUT/telemetry.csv" 2>/dev/null &
smi=$!
sleep 1
if ! kill -0 $smi 2>/dev/null; then  # an older driver without clocks_event_reasons
  nvidia-smi --query-gpu=$fields --format=csv,noheader,nounits -lms 100 >"$OUT/telemetry.csv" 2>&1 &
  smi=$!
fi
mark() { echo "$(date '+%Y/%m/%d %H:%M:%S.%3N') $1" >>"$OUT/phases.txt"; }
mark "idle"
sleep 2
mark "monta"
"$BIN/monta" bench layer --iters "$ITERS" --breakdown --json "$OUT/bench_layer.json" 2>&1 | tee "$OUT/bench_layer.log" \
  || status=1
mark "idle"
sleep 2
mark "torch"
python3 scripts/torch_layer_ref.py --iters "$ITERS" --json "$OUT/torch_layer.json" 2>&1 | tee "$OUT/torch_layer.log" \
  || status=1
mark "idle"
sleep 2
mark "monta-again"
"$BIN/monta" bench layer --iters "$ITERS" --json "$OUT/bench_layer_again.json" 2>&1 | tee "$OUT/bench_layer_again.log" \
  || status=1
mark "end"
kill $smi 2>/dev/null
python3 - "$OUT" <<'PY' | tee "$OUT/telemetry_summary.txt"
import sys, datetime, statistics
out = sys.argv[1]
def t(s): return datetime.datetime.strptime(s.strip()[:23], "%Y/%m/%d %H:%M:%S.%f")
phases = [(t(l[:23]), l[24:].strip()) for l in open(f"{out}/phases.txt")]
rows = []
for l in open(f"{out}/telemetry.csv"):
    f = [x.strip() for x in l.split(",")]
    try: rows.append((t(f[0]), float(f[1]), float(f[2]), float(f[3]), float(f[4]), f[5] if len(f) > 5 else ""))
    except (ValueError, IndexError): pass
print(f"{'phase':12s} {'samples':>7s} {'SM MHz med':>10s} {'min':>6s} {'W med':>7s} {'W max':>7s} {'°C max':>6s} reasons (busy samples)")
for (t0, name), (t1, _) in zip(phases, phases[1:]):
    if name == "idle": continue
    s = [r for r in rows if t0 <= r[0] < t1 and r[4] > 50]
    if not s: print(f"{name:12s} no busy samples"); continue
    reasons = {}
    for r in s: reasons[r[5]] = reasons.get(r[5], 0) + 1
    print(f"{name:12s} {len(s):7d} {statistics.median(r[1] for r in s):10.0f} {min(r[1] for r in s):6.0f} "
          f"{statistics.median(r[2] for r in s):7.1f} {max(r[2] for r in s):7.1f} {max(r[3] for r in s):6.0f} {reasons}")
PY
exit $status
