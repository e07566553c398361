#!/usr/bin/env bash
# bench_checkpoint.sh: `monta bench checkpoint` on tiny (1 rank async, 2 ranks ep 2 sync) writes its JSON with every
# row (raw write/read, save, verify, load, resharded load) and a positive rate, checks the loaded state equals the
# saved one (it fails otherwise), and removes what it wrote; a non-empty --dir is refused and left alone.
source "$(dirname "$0")/lib.sh"
w=$WORK/bench_checkpoint; rm -rf "$w"; mkdir -p "$w"
check() {
  python3 - "$1" "$2" <<'PY' || fail "bad JSON $1"
import json, sys
b = json.load(open(sys.argv[1]))
ops = [r["op"] for r in b["rows"]]
want = ["raw write", "raw read", sys.argv[2], "verify (checksums)", "load (same layout)", "load resharded (rank 0 of tp 2)"]
assert ops == want, ops
assert all(r["gbps"] > 0 and r["bytes"] > 0 for r in b["rows"]), b["rows"]
assert b["checkpoint_bytes"] > b["state_bytes"] > 0 and b["pause_ms"] > 0
print("ok:", ", ".join(f"{r['op']} {r['gbps']:.3f} GB/s" for r in b["rows"]))
PY
}
"$MONTA" bench checkpoint --config "$CFG" --train.device cpu --dir "$w/one" --json "$w/one.json" > "$w/one.log" 2>&1 ||
  { cat "$w/one.log"; fail "1 rank"; }
check "$w/one.json" "save (async)"
"$MPIEXEC" --allow-run-as-root --oversubscribe -np 2 "$MONTA" bench checkpoint --config "$CFG" --train.device cpu \
  --parallel.ep 2 --checkpoint.async false --dir "$w/two" --json "$w/two.json" > "$w/two.log" 2>&1 ||
  { cat "$w/two.log"; fail "2 ranks"; }
check "$w/two.json" "save (sync)"
[ ! -e "$w/one" ] && [ ! -e "$w/two" ] || fail "the benchmark left files behind"
mkdir -p "$w/busy"; touch "$w/busy/keep"
expect_error "--dir $w/busy exists and is not an empty directory" "$MONTA" bench checkpoint --config "$CFG" \
  --train.device cpu --dir "$w/busy"
[ -f "$w/busy/keep" ] || fail "the refused benchmark touched --dir"
echo "PASS: bench checkpoint"
