#!/usr/bin/env bash
# bitexact.sh NP TP EP: N steps straight and N/2 + resume + N/2 give the same metrics (all 17 digits, the final
# validation loss too: resume keeps the held-out batches), the same checkpoint shards (byte-identical HDF5, weights
# and AdamW moments) and the same `monta export`.
source "$(dirname "$0")/lib.sh"
np=$1 tp=$2 ep=$3
w=$WORK/bitexact_np${np}; rm -rf "$w"; mkdir -p "$w"
run() { if [ "$np" -eq 1 ]; then train "$@"; else train_np "$np" "$@"; fi; }
common=(--parallel.tp "$tp" --parallel.ep "$ep" --train.log_interval 100)
run "$w/straight" "${common[@]}" --train.steps 4 --checkpoint.interval 4 > "$w/straight.log" || { cat "$w/straight.log"; fail "straight run"; }
run "$w/split" "${common[@]}" --train.steps 2 --checkpoint.interval 2 > "$w/split1.log" || { cat "$w/split1.log"; fail "first half"; }
run "$w/split" "${common[@]}" --train.steps 4 --checkpoint.interval 2 --checkpoint.resume auto > "$w/split2.log" || { cat "$w/split2.log"; fail "second half"; }
grep -q "resumed from $(ckpt "$w/split" 2) at step 2" "$w/split2.log" || fail "second half did not resume from step 2"
diff <(losses "$w/straight/metrics.jsonl") <(losses "$w/split/metrics.jsonl") || fail "metrics differ"
[ "$(losses "$w/split/metrics.jsonl" | wc -l)" -eq 4 ] || fail "expected 4 metrics lines"
[ -n "$(val_at "$w/straight/metrics.jsonl" 4)" ] || fail "no val_loss at the last step"
[ "$(val_at "$w/straight/metrics.jsonl" 4)" = "$(val_at "$w/split/metrics.jsonl" 4)" ] || fail "val_loss at step 4 differs"
[ -n "$(val_at "$w/split/metrics.jsonl" 2)" ] || fail "no val_loss at the end of the first half"
diff <(grep '^file\.' "$(ckpt "$w/straight" 4)/manifest.txt") <(grep '^file\.' "$(ckpt "$w/split" 4)/manifest.txt") ||
  fail "checkpoint shards differ (size/checksum)"
"$MONTA" export --checkpoint "$(ckpt "$w/straight" 4)" --out "$w/straight.h5" > /dev/null 2>&1 || fail "export"
"$MONTA" export --checkpoint "$(ckpt "$w/split" 4)" --out "$w/split.h5" > /dev/null 2>&1 || fail "export"
cmp "$w/straight.h5" "$w/split.h5" || fail "exports differ"
echo "PASS: np $np tp $tp ep $ep: resumed run equals the straight run bit for bit"
