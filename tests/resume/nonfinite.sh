#!/usr/bin/env bash
# nonfinite.sh CASE: non-finite steps are skipped and counted; max_skipped in a row stops the run with an error.
source "$(dirname "$0")/lib.sh"
w=$WORK/nonfinite_$1; rm -rf "$w"; mkdir -p "$w"
case $1 in
  skip)  # steps 2 and 3 see a NaN weight: both SKIPPED, counted, and training recovers
    out=$(MONTA_TEST_NAN_STEPS=2,3 train "$w/run" --train.steps 5 --train.max_skipped 3 --train.log_interval 100) ||
      { echo "$out"; fail "run failed"; }
    [ "$(grep -c "SKIPPED" <<<"$out")" -eq 2 ] || { echo "$out"; fail "expected 2 SKIPPED lines"; }
    grep -q "step 3: non-finite .* (2 in a row)" <<<"$out" || fail "skip not counted"
    [ "$(losses "$w/run/metrics.jsonl" | awk '$6 == "True"' | cut -d' ' -f1 | tr '\n' ' ')" = "2 3 " ] || fail "metrics skipped flags"
    grep -q "^step *5 | loss" <<<"$out" || fail "did not finish" ;;
  stop)  # three in a row with max_skipped 3: the promised error
    expect_error "3 consecutive steps had a non-finite loss or gradient norm; stopping (train.max_skipped = 3)" \
      env MONTA_TEST_NAN_STEPS=2,3,4 "$MONTA" train --config "$CFG" --train.device cpu --train.run_dir "$w/run" \
      --train.steps 6 --train.max_skipped 3 ;;
  lr)  # a diverging learning rate ends the same way, without a hook
    expect_error "consecutive steps had a non-finite loss or gradient norm" train "$w/run" --train.steps 20 \
      --train.lr 1e30 --train.min_lr 0 --train.warmup_steps 0 --train.max_skipped 2 ;;
esac
echo "PASS: $1"
