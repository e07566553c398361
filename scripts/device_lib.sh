# Shared by the device scripts (source it after setting OUT; `status` collects failures): the GPU's identity in
# $OUT/gpu.txt and `run NAME CMD...`, which logs a command to $OUT/NAME.log, shows its last $RUN_TAIL lines and its
# time, and remembers a failure in status. RUN_TIMEOUT (seconds, 0: none) bounds each command.
status=${status:-0}
RUN_TAIL=${RUN_TAIL:-25}
RUN_TIMEOUT=${RUN_TIMEOUT:-0}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
run() {  # run NAME CMD...
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $*"
  if [ "$RUN_TIMEOUT" != 0 ]; then set -- timeout "$RUN_TIMEOUT" "$@"; fi
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n "$RUN_TAIL" "$OUT/$name.log"
  [ $rc = 0 ] || { echo "$name FAILED (exit $rc)"; status=1; }
  echo "== $name: $((SECONDS - t0)) s"
}
