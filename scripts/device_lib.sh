# Shared by the device scripts (source it after setting OUT; `status` collects failures): the GPU's identity in
# $OUT/gpu.txt (or that there is none) and `run NAME CMD...`, which logs a command to $OUT/NAME.log, shows its last
# $RUN_TAIL lines (without those matching the extended regex RUN_FILTER, when set) and its time, and remembers a
# failure in status. RUN_TIMEOUT (seconds, 0: none) bounds each command.
status=${status:-0}
RUN_TAIL=${RUN_TAIL:-25}
RUN_TIMEOUT=${RUN_TIMEOUT:-0}
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
else
  echo "no GPU (nvidia-smi not found)" | tee "$OUT/gpu.txt"
fi
run() {  # run NAME CMD...
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $*"
  if [ "$RUN_TIMEOUT" != 0 ]; then set -- timeout "$RUN_TIMEOUT" "$@"; fi
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [ -n "${RUN_FILTER:-}" ]; then
    grep -vE "$RUN_FILTER" "$OUT/$name.log" | tail -n "$RUN_TAIL"
  else
    tail -n "$RUN_TAIL" "$OUT/$name.log"
  fi
  [ $rc = 0 ] || { echo "$name FAILED (exit $rc)"; status=1; }
  echo "== $name: $((SECONDS - t0)) s"
}
