#!/usr/bin/env bash
# router_bias.sh NP TP EP: with the auxiliary-loss-free balancing bias (model.router_bias_update) and renormalised
# top-k weights on, N steps straight and N/2 + resume + N/2 give the same metrics (losses, norms and the expert load
# ratios, all 17 digits), the same checkpoint shards and the same export, whose router_bias is not zero (so a bias
# lost at the save would show); the step-2 checkpoint also resumes in one process (another layout: resharding), and
# is refused by a config without the routing options (another model).
source "$(dirname "$0")/lib.sh"
np=$1 tp=$2 ep=$3
w=$WORK/router_bias_np${np}; rm -rf "$w"; mkdir -p "$w"
run() { if [ "$np" -eq 1 ]; then train "$@"; else train_np "$np" "$@"; fi; }
routing=(--model.router_bias_update 0.02 --model.router_norm_topk true --train.eval_steps 0)
common=(--parallel.tp "$tp" --parallel.ep "$ep" --train.log_interval 100 "${routing[@]}")
# step loss grad_norm load_max load_min, as written
rows() {
  python3 -c "
import json, sys
for l in open(sys.argv[1]):
    if l.strip():
        r = json.loads(l)
        print(r['step'], r['loss'], r['grad_norm'], r['load_max'], r['load_min'])" "$1"
}
run "$w/straight" "${common[@]}" --train.steps 4 --checkpoint.interval 4 > "$w/straight.log" || { cat "$w/straight.log"; fail "straight run"; }
run "$w/split" "${common[@]}" --train.steps 2 --checkpoint.interval 2 > "$w/split1.log" || { cat "$w/split1.log"; fail "first half"; }
run "$w/split" "${common[@]}" --train.steps 4 --checkpoint.interval 2 --checkpoint.resume auto > "$w/split2.log" || { cat "$w/split2.log"; fail "second half"; }
grep -q "resumed from $(ckpt "$w/split" 2) at step 2" "$w/split2.log" || fail "second half did not resume from step 2"
[ "$(rows "$w/split/metrics.jsonl" | wc -l)" -eq 4 ] || fail "expected 4 metrics lines"
diff <(rows "$w/straight/metrics.jsonl") <(rows "$w/split/metrics.jsonl") || fail "metrics differ"
diff <(grep '^file\.' "$(ckpt "$w/straight" 4)/manifest.txt") <(grep '^file\.' "$(ckpt "$w/split" 4)/manifest.txt") ||
  fail "checkpoint shards differ (size/checksum)"
"$MONTA" export --checkpoint "$(ckpt "$w/straight" 4)" --out "$w/straight.h5" > /dev/null 2>&1 || fail "export"
"$MONTA" export --checkpoint "$(ckpt "$w/split" 4)" --out "$w/split.h5" > /dev/null 2>&1 || fail "export"
cmp "$w/straight.h5" "$w/split.h5" || fail "exports differ"
python3 - "$w/straight.h5" <<'PY' || fail "export: router_bias missing, misshapen or still zero"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    names = []
    f.visit(names.append)
    b = [n for n in names if n.endswith("router_bias")]
    assert len(b) == 1, names
    v = np.asarray(f[b[0]])
    print("router_bias", b[0], v.shape, v.tolist())
    assert v.shape == (2, 4) and np.abs(v).max() > 0
PY
# Resharding: the step-2 checkpoint resumes in one process and trains on within float rounding of the NP-rank run.
train "$w/one" "${routing[@]}" --train.log_interval 100 --train.steps 3 --checkpoint.resume "$(ckpt "$w/split" 2)" \
  > "$w/one.log" || { cat "$w/one.log"; fail "resume in one process"; }
close "$(loss_at "$w/one/metrics.jsonl" 3)" "$(loss_at "$w/straight/metrics.jsonl" 3)" 1e-5 || fail "resharded resume: loss at step 3"
# The bias and the renormalisation are part of the model's signature: switched off, the checkpoint is refused.
expect_error "is of another model" train "$w/off" --train.steps 3 --checkpoint.resume "$(ckpt "$w/split" 2)"
echo "PASS: np $np tp $tp ep $ep: with the balancing bias, the resumed run equals the straight run bit for bit"
