# Shared helpers of the resume/fault tests: the environment (MONTA, CFG, MPIEXEC, WORK from CMake), a small
# run wrapper, the promised-error check and comparisons of metrics and exports.
set -u
: "${MONTA:?}" "${CFG:?}" "${WORK:?}"
MPIEXEC=${MPIEXEC:-mpirun}
mkdir -p "$WORK"

fail() { echo "FAIL: $*"; exit 1; }

# CKPT_ASYNC (true|false; set by CMake for the tests that save, which run in both modes): passed to every run as
# --checkpoint.async. Unset: the config's default.
ASYNC=()
[ -n "${CKPT_ASYNC:-}" ] && ASYNC=(--checkpoint.async "$CKPT_ASYNC")

# train RUN_DIR ARGS...: one rank; train_np NP RUN_DIR ARGS...: NP ranks through mpirun. Output goes to stdout.
train() {
  local dir=$1; shift
  "$MONTA" train --config "$CFG" --train.device cpu --train.run_dir "$dir" ${ASYNC[@]+"${ASYNC[@]}"} "$@" 2>&1
}
train_np() {
  local np=$1 dir=$2; shift 2
  "$MPIEXEC" --allow-run-as-root --oversubscribe -np "$np" "$MONTA" train --config "$CFG" --train.device cpu \
    --train.run_dir "$dir" ${ASYNC[@]+"${ASYNC[@]}"} "$@" 2>&1
}

# expect_error PHRASE CMD...: CMD must exit non-zero with exactly one "monta: error:" line containing PHRASE.
expect_error() {
  local phrase=$1; shift
  local out rc
  out=$("$@" 2>&1); rc=$?
  echo "$out" | tail -n 5
  [ $rc -ne 0 ] || fail "command succeeded but should have failed: $*"
  local n; n=$(grep -c "^monta: error:" <<<"$out" || true)
  [ "$n" -eq 1 ] || fail "expected one 'monta: error:' line, got $n"
  grep "^monta: error:" <<<"$out" | grep -qF -- "$phrase" || fail "error line lacks '$phrase'"
}

# losses METRICS [FIRST LAST]: "step loss aux_loss z_loss grad_norm skipped" per line, as written (17 digits).
losses() {
  python3 - "$@" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
lo = int(sys.argv[2]) if len(sys.argv) > 2 else 1
hi = int(sys.argv[3]) if len(sys.argv) > 3 else 10**9
for r in rows:
    if lo <= r["step"] <= hi:
        print(r["step"], r["loss"], r["aux_loss"], r["z_loss"], r["grad_norm"], r["skipped"])
PY
}

# val_at METRICS STEP: the val_loss written for STEP (the last line for it that has one; empty if none).
val_at() {
  python3 -c "import json,sys; v=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]; v=[r['val_loss'] for r in v if r['step']==int(sys.argv[2]) and 'val_loss' in r]; print(repr(v[-1]) if v else '')" "$1" "$2"
}

# loss_at METRICS STEP: the loss written for STEP (the last line for it).
loss_at() { losses "$1" "$2" "$2" | tail -n 1 | cut -d' ' -f2; }

# close A B RTOL: |A - B| <= RTOL * |B|
close() { python3 -c "import sys; a,b,t=map(float,sys.argv[1:]); sys.exit(0 if abs(a-b)<=t*abs(b) else 1)" "$@"; }

# snapshot DIR: checksum of every file under DIR (to prove a failed command changed nothing).
snapshot() { (cd "$1" && find . -type f | sort | xargs md5sum); }

ckpt() { printf '%s/checkpoints/step_%08d' "$1" "$2"; }
