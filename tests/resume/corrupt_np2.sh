#!/usr/bin/env bash
# corrupt_np2.sh: 2 ranks; the step-4 checkpoint's rank_00001.h5 has 4 bytes changed. Only rank 1 streams that file
# while loading (each file is checksummed by one rank), so the ranks must agree on the verdict: an explicit resume
# fails on both with the error naming the file and changes nothing in the run directory; `resume auto` warns, falls
# back to step 2 on both ranks together and continues with the losses of the first run.
source "$(dirname "$0")/lib.sh"
w=$WORK/corrupt_np2; rm -rf "$w"; mkdir -p "$w"
common=(--parallel.ep 2 --train.log_interval 100 --checkpoint.interval 2 --checkpoint.writers 1)
train_np 2 "$w/run" "${common[@]}" --train.steps 4 > "$w/first.log" || { cat "$w/first.log"; fail "first run"; }
cp "$w/run/metrics.jsonl" "$w/first.jsonl"
bad=$(ckpt "$w/run" 4) shard=$(ckpt "$w/run" 4)/rank_00001.h5
printf '\xde\xad\xbe\xef' | dd of="$shard" bs=1 seek=$(( $(stat -c %s "$shard") / 2 )) conv=notrunc status=none
before=$(snapshot "$w/run")
out=$(train_np 2 "$w/run" "${common[@]}" --train.steps 6 --checkpoint.resume "$bad") && { echo "$out"; fail "resumed from a corrupt checkpoint"; }
grep "^monta: error:" <<<"$out" | grep -qF "checkpoint $bad cannot be loaded: rank_00001.h5 fails its checksum (corrupt)" ||
  { echo "$out"; fail "no error naming rank_00001.h5"; }
[ "$before" = "$(snapshot "$w/run")" ] || fail "the refused resume changed the run directory"
out=$(train_np 2 "$w/run" "${common[@]}" --train.steps 4 --checkpoint.resume auto) || { echo "$out"; fail "auto"; }
grep -q "skipping checkpoint $bad: .*rank_00001.h5 fails its checksum" <<<"$out" || { echo "$out"; fail "no warning"; }
grep -q "resumed from $(ckpt "$w/run" 2) at step 2" <<<"$out" || { echo "$out"; fail "auto did not fall back to step 2"; }
diff <(losses "$w/first.jsonl" 3 4) <(losses "$w/run/metrics.jsonl" 3 4 | tail -n 2) || fail "losses after the fallback differ"
echo "PASS: a corrupt file seen by one rank stops (explicit) or falls back (auto) on both"
