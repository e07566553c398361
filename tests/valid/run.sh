#!/usr/bin/env bash
# run.sh: 40 steps of the tiny config on one rank with an evaluation every 10 steps and checkpoints at 20 and 40
# (the fixture of eval.sh and plot.sh). Checks: val_loss and val_ppl = exp(val_loss) on exactly steps 10, 20, 30, 40
# of metrics.jsonl and on those step lines; the held-out loss falls; run_info.json carries the entropy floor.
source "$(dirname "$0")/../resume/lib.sh"
w=$WORK/valid_run; rm -rf "$w"
train "$w" --train.steps 40 --train.eval_interval 10 --train.eval_steps 4 --checkpoint.interval 20 \
  --train.log_interval 100 > "$WORK/valid_run.log" || { cat "$WORK/valid_run.log"; fail "training run"; }
cat "$WORK/valid_run.log" | grep -E "held-out|val_loss"
[ "$(grep -c '| val_loss ' "$WORK/valid_run.log")" -eq 4 ] || fail "expected 4 step lines with val_loss"
python3 - "$w" <<'PY' || fail "metrics"
import json, math, sys
w = sys.argv[1]
rows = [json.loads(l) for l in open(f"{w}/metrics.jsonl") if l.strip()]
val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
assert sorted(val) == [10, 20, 30, 40], f"val_loss at steps {sorted(val)}"
for r in rows:
    if "val_loss" in r:
        assert abs(r["val_ppl"] - math.exp(r["val_loss"])) <= 1e-9 * r["val_ppl"], r
info = json.load(open(f"{w}/run_info.json"))
floor = info["entropy_floor"]
assert info["tokens_per_step"] == 16 * 64, info
print("val_loss by step:", {s: round(v, 4) for s, v in val.items()}, "floor", round(floor, 4))
assert val[40] < val[10] - 0.2, "held-out loss did not fall"
assert all(val[s] > floor - 0.05 for s in val), "held-out loss below the entropy floor: a leak"
PY
echo "PASS: held-out loss falls; val_loss and val_ppl reported at every eval_interval and at the end"
