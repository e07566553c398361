#!/usr/bin/env bash
# Checkpoints at 70B width on one H200 (issue 20): `monta bench checkpoint` of one 2x70B-width layer (vocab 512,
# 1.57 B parameters, an 18 GB checkpoint) against the disk's raw sequential write/read in the same run, then a short
# training run with a save every 4 steps, checkpoint.async true and false: the pause a save adds to its step
# against a normal step, and the step times while the write goes on in the background. About 5 minutes at
# ~1.6 GB/s; every command is bounded so the whole stays under 8. Binaries from $BIN; logs and JSON in $OUT;
# scratch (up to ~40 GB) in $WORKDIR, removed as it goes.
# SWEEP=1: instead, the bench alone for checkpoint.writers 1, 4 and 8 with O_DIRECT and 4 through the page cache
# (which writer count fills this disk; ~7 minutes), summarised in $OUT/sweep.txt.
set -uo pipefail
BIN=${BIN:-build/bin}
OUT=${OUT:-/tmp/monta-out}
WORKDIR=${WORKDIR:-$PWD/.ckpt_device_work}
M="$BIN/monta"
mkdir -p "$OUT"
rm -rf "$WORKDIR"; mkdir -p "$WORKDIR"
model=(--config configs/layer2x70b.ini --model.layers 1 --model.vocab 512 --train.device cuda)
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; df -h "$WORKDIR" | tail -n 1; free -g | sed -n 2p; } \
  | tee "$OUT/machine.txt"

if [ "${SWEEP:-0}" = 1 ]; then
  for wd in 1:true 4:true 8:true 4:false; do
    w=${wd%:*} d=${wd#*:}
    timeout 140 "$M" bench checkpoint "${model[@]}" --checkpoint.async true --checkpoint.writers "$w" \
      --checkpoint.direct "$d" --dir "$WORKDIR/bench" --json "$OUT/bench_w${w}_direct_$d.json" 2>&1 \
      | tee "$OUT/bench_w${w}_direct_$d.log"
    rm -rf "$WORKDIR/bench"
  done
  python3 - "$OUT" <<'PY' | tee "$OUT/sweep.txt"
import glob, json, sys
for f in sorted(glob.glob(f"{sys.argv[1]}/bench_w*_direct_*.json")):
    b = json.load(open(f))
    rows = {r["op"]: r for r in b["rows"]}
    save = next(r for op, r in rows.items() if op.startswith("save"))
    load = rows.get("load (same layout)", {})
    print(f"{f.split('/')[-1]:<32} raw write {rows['raw write']['gbps']:.3f} GB/s, save {save['gbps']:.3f} GB/s = "
          f"{100*save['of_raw']:.0f}% of raw ({save['note']}); load {load.get('gbps', 0):.3f} GB/s = "
          f"{100*load.get('of_raw', 0):.0f}% of raw read")
PY
  rm -rf "$WORKDIR"
  exit 0
fi

# 1. bench checkpoint (async save, checkpoint.writers at its default), the disk's ceiling beside it. ~100 s.
timeout 200 "$M" bench checkpoint "${model[@]}" --checkpoint.async true --dir "$WORKDIR/bench" \
  --json "$OUT/bench_checkpoint.json" 2>&1 | tee "$OUT/bench_checkpoint.log"
rm -rf "$WORKDIR/bench"

# 2. Training with a save every 4 steps (8 steps: saves at 4 and 8), async on and off. Each line is stamped with
# the wall clock as it arrives, so a step's wall time (line to line) includes the pause of the save before it.
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }
for mode in true false; do
  timeout 130 "$M" train "${model[@]}" --train.run_dir "$WORKDIR/train_$mode" --train.steps 8 --train.log_interval 1 \
    --checkpoint.interval 4 --checkpoint.keep 1 --checkpoint.async "$mode" 2>&1 | stamp > "$OUT/train_async_$mode.log"
  rm -rf "$WORKDIR/train_$mode"
done

# 3. Summary: per step, the wall time since the previous step line; the saving step's excess over a normal step.
python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, re, statistics, sys
out = sys.argv[1]
try:
    b = json.load(open(f"{out}/bench_checkpoint.json"))
    print(f"bench checkpoint ({b['checkpoint_bytes']/1e9:.1f} GB checkpoint, raw I/O: {b['raw_io']}):")
    for r in b["rows"]:
        print(f"  {r['op']:<34} {r['gbps']:7.3f} GB/s  {100*r['of_raw']:5.0f}% of raw  {r['note']}")
    print(f"  training pause for the save: {b['pause_ms']:.0f} ms")
except Exception as e:
    print("bench checkpoint: no result", e)
for mode in ("true", "false"):
    lines = [l.rstrip("\n").split(" ", 1) for l in open(f"{out}/train_async_{mode}.log") if " " in l]
    steps = {}
    for t, text in lines:
        m = re.match(r"step +(\d+) \| .*\| +([\d.]+) ms \|", text)
        if m: steps[int(m.group(1))] = (float(t), float(m.group(2)))
    wall = {s: steps[s][0] - steps[s - 1][0] for s in steps if s - 1 in steps}
    pause = [text for _, text in lines if "training paused" in text or text.startswith("saved checkpoint")]
    waited = [text for _, text in lines if "waited" in text]
    print(f"\ncheckpoint.async = {mode}: wall time per step (s) since the previous step line, step_ms of the step itself")
    for s in sorted(wall): print(f"  step {s}: wall {wall[s]:7.3f}  compute {steps[s][1]/1e3:7.3f}")
    normal = [wall[s] for s in (2, 3, 4) if s in wall]
    if normal and 5 in wall:
        n = statistics.median(normal)
        print(f"  normal step {n:.3f} s; step 5 (after the save at step 4) {wall[5]:.3f} s: the save added {wall[5]-n:.3f} s")
    for t in pause + waited: print("  " + t)
PY
rm -rf "$WORKDIR"
