#!/usr/bin/env bash
# FP8 accuracy at 2x70B widths (issue 17): the 2-layer 2x70B-width model (hidden 8192, FFN 28672, 2 experts, vocab
# 32000, seq 8192; configs/layer2x70b.ini with 2 layers, 3.6 B parameters, ~69 GiB per the dry run) trained for
# $STEPS steps from the same init (train.seed) with model.fp8 = each of $MODES, on one corpus per call:
#   CORPUS=markov  the built-in Markov corpus (its entropy floor is known);
#   CORPUS=text    real text found on the machine (licences, package copyright files and changelogs, the
#                  Markdown/reStructuredText/plain-text files of the Python packages), byte-level tokens, the last
#                  2% held out for validation. What it used is listed in $OUT/text_corpus.txt.
# Per mode: metrics.jsonl copied to $OUT/<corpus>_<mode>.jsonl; a summary of the final losses (mean of the last 10
# steps), the last validation loss, their ratio to fp8 none and a divergence check in $OUT/<corpus>_summary.txt.
# About 50 s per mode on an H200.
#   BIN=.devbin OUT=$OUT CORPUS=markov bash scripts/device_fp8_accuracy.sh
set -uo pipefail
BIN=${BIN:-build/bin}
OUT=${OUT:-/tmp/monta-out}
CORPUS=${CORPUS:-markov}
STEPS=${STEPS:-200}
MODES=${MODES:-"none experts all"}
LR=${LR:-3e-4}  # peak; the cosine ends at LR/10
EXTRA=${EXTRA:-}
MODEL=${MODEL:-"--config configs/layer2x70b.ini --model.layers 2 --train.device cuda"}  # a CPU check: tiny.ini
WORK=${WORKDIR:-$PWD/.fp8_accuracy_work}
mkdir -p "$OUT"
rm -rf "$WORK"
mkdir -p "$WORK"
status=0

data=(--data.path builtin:markov --data.builtin_tokens $((STEPS * 8192 + 65536)))
if [ "$CORPUS" = text ]; then
  # Real English-language text: up to 24 MB, in a fixed order (sorted paths) so a rerun sees the same bytes.
  {
    find /usr/share/common-licenses -type f 2>/dev/null | sort | xargs -r cat
    find /usr/share/doc -name copyright -type f 2>/dev/null | sort | xargs -r cat
    find /usr/share/doc -name 'changelog*.gz' -type f 2>/dev/null | sort | xargs -r zcat 2>/dev/null
    python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null | while read -r d; do
      find "$d" \( -name '*.md' -o -name '*.rst' -o -name '*.txt' \) -type f -size +2k 2>/dev/null | sort | xargs -r cat
    done
  } | head -c 24000000 > "$WORK/text.txt"
  bytes=$(stat -c %s "$WORK/text.txt")
  echo "text corpus: $bytes bytes from /usr/share/common-licenses, /usr/share/doc/*/copyright and changelogs, and the" \
    "Python packages' .md/.rst/.txt files; first lines:" > "$OUT/text_corpus.txt"
  head -n 5 "$WORK/text.txt" >> "$OUT/text_corpus.txt"
  "$BIN/monta" prepare-data --input "$WORK/text.txt" --output "$WORK/text.h5" --format text 2>&1 | tee -a "$OUT/text_corpus.txt"
  data=(--data.path "$WORK/text.h5" --data.valid_fraction 0.02)
fi

for mode in $MODES; do
  log="$OUT/${CORPUS}_$mode.log"
  echo "== $CORPUS, model.fp8 $mode"
  # shellcheck disable=SC2086
  timeout 280 "$BIN/monta" train $MODEL \
    --train.steps "$STEPS" --train.lr "$LR" --train.min_lr "$(python3 -c "print($LR / 10)")" --train.warmup_steps 20 --train.log_interval 20 \
    --train.eval_interval 50 --train.eval_steps 2 --train.run_dir "$WORK/run_$mode" --model.fp8 "$mode" \
    "${data[@]}" $EXTRA > "$log" 2>&1
  rc=$?
  tail -n 4 "$log"
  [ $rc = 0 ] || { echo "$CORPUS $mode FAILED (exit $rc)"; status=1; }
  cp "$WORK/run_$mode/metrics.jsonl" "$OUT/${CORPUS}_$mode.jsonl" 2>/dev/null
  rm -rf "$WORK/run_$mode"
done
rm -rf "$WORK"

python3 - "$OUT" "$CORPUS" $MODES <<'PY' | tee "$OUT/${CORPUS}_summary.txt"
import json, math, os, sys
out, corpus, modes = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = {}
for m in modes:
    p = os.path.join(out, f"{corpus}_{m}.jsonl")
    if not os.path.exists(p):
        print(f"{m:8s} no metrics (the run failed)")
        continue
    rows = [json.loads(l) for l in open(p) if l.strip()]
    train = [r for r in rows if "loss" in r and "step" in r]
    val = [r for r in rows if "val_loss" in r]
    runs[m] = (train, val)
base = runs.get("none")
print(f"corpus {corpus}: final loss = mean of the last 10 steps' training loss; val = the last validation loss")
print(f"{'fp8':8s} {'steps':>5s} {'final loss':>10s} {'/ none':>8s} {'val loss':>9s} {'/ none':>8s} {'max loss':>9s} "
      f"{'step ms':>8s}  verdict")
for m, (train, val) in runs.items():
    fin = sum(r["loss"] for r in train[-10:]) / max(1, len(train[-10:]))
    v = val[-1]["val_loss"] if val else float("nan")
    mx = max(r["loss"] for r in train)
    ms = sorted(r["step_ms"] for r in train[5:])[len(train[5:]) // 2] if len(train) > 5 else float("nan")
    r_fin = fin / (sum(r["loss"] for r in base[0][-10:]) / 10) if base else float("nan")
    r_val = v / base[1][-1]["val_loss"] if base and base[1] else float("nan")
    finite = all(math.isfinite(r["loss"]) for r in train)
    ok = finite and (m == "none" or (abs(r_fin - 1) <= 0.01 and not r_val > 1.01))
    print(f"{m:8s} {len(train):5d} {fin:10.4f} {r_fin:8.4f} {v:9.4f} {r_val:8.4f} {mx:9.4f} {ms:8.1f}  "
          f"{'ok' if ok else 'OUTSIDE 1% or diverged'}")
# The curves, every 10th step, for docs/results.
print("\nstep " + " ".join(f"{m:>9s}" for m in runs))
n = min(len(t) for t, _ in runs.values()) if runs else 0
for i in range(0, n, 10):
    print(f"{runs[next(iter(runs))][0][i]['step']:4d} " + " ".join(f"{t[i]['loss']:9.4f}" for t, _ in runs.values()))
PY
exit $status
