#!/usr/bin/env bash
# `monta bench layer` with two binaries in one device session, interleaved (old, new, old, new, ...), so a refactor
# can be shown to be within noise on the same card at the same temperature (issue 14). Each run writes its JSON;
# the summary gives per binary the median and range of the layer's fwd+bwd and "grads added" times.
#   OLD_BIN=build-old/bin NEW_BIN=build/bin ROUNDS=3 ITERS=10 scripts/device_layer_ab.sh
# OLD_BIN and NEW_BIN are folders holding a CUDA build's `monta` (about 8 MB each, so both travel to the device
# machine as carried build folders); OUT (default /tmp/monta-out) gets logs and JSON. The old one, built beside
# the checkout (build-* is ignored by git):
#   git worktree add /tmp/monta-old <old commit>
#   cmake -S /tmp/monta-old -B build-old -G Ninja -DMONTA_CUDA=ON && cmake --build build-old --target monta
set -uo pipefail
OLD_BIN=${OLD_BIN:?set OLD_BIN to the folder of the old monta}
NEW_BIN=${NEW_BIN:?set NEW_BIN to the folder of the new monta}
OUT=${OUT:-/tmp/monta-out}
ROUNDS=${ROUNDS:-3}
ITERS=${ITERS:-10}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
status=0
for r in $(seq 1 "$ROUNDS"); do
  for which in old new; do
    bin=$OLD_BIN
    [ "$which" = new ] && bin=$NEW_BIN
    echo "== round $r: $which ($bin/monta)"
    "$bin/monta" bench layer --iters "$ITERS" --json "$OUT/layer_${which}_$r.json" 2>&1 | tee "$OUT/layer_${which}_$r.log" |
      grep -E "layer fwd|ceiling" || status=1
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY' | tee "$OUT/layer_ab_summary.txt"
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def ms(which, op):
    v = []
    for r in range(1, rounds + 1):
        try:
            rows = json.load(open(f"{out}/layer_{which}_{r}.json"))["rows"]
            v += [x["ms"] for x in rows if x["op"] == op]
        except (OSError, ValueError, KeyError) as e:
            print(f"layer_{which}_{r}.json: {e}")
    return v
print(f"{'row':30s} {'binary':6s} {'median ms':>10s} {'min':>8s} {'max':>8s}  runs")
for op in ("layer fwd+bwd", "layer fwd+bwd, grads added", "layer fwd only"):
    med = {}
    for which in ("old", "new"):
        v = ms(which, op)
        if not v: continue
        med[which] = statistics.median(v)
        print(f"{op:30s} {which:6s} {med[which]:10.3f} {min(v):8.3f} {max(v):8.3f}  {', '.join(f'{x:.2f}' for x in v)}")
    if len(med) == 2:
        print(f"{op:30s} new/old {med['new'] / med['old']:.4f}")
PY
exit $status
