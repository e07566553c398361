#!/usr/bin/env bash
# plot.sh: scripts/plot_run.py on valid_run writes a non-empty PNG that opens (PNG signature, matplotlib reads it
# back at the size it was drawn).
source "$(dirname "$0")/../resume/lib.sh"
: "${PLOT:?}"
out=$WORK/valid_run.png; rm -f "$out"
# Debian's python3-matplotlib serves /usr/bin/python3 (the script's interpreter), whatever python3 is first on PATH.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
"$py" -c "import matplotlib" 2>/dev/null || fail "python3-matplotlib is not installed (scripts/setup.sh installs it)"
"$py" "$PLOT" "$WORK/valid_run" -o "$out" --title "valid_run" || fail "plot_run.py"
"$py" - "$out" <<'PY' || fail "the PNG does not open"
import os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.image as mpimg
p = sys.argv[1]
size = os.path.getsize(p)
assert size > 10_000, f"{p}: only {size} bytes"
assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n", "no PNG signature"
img = mpimg.imread(p)
assert img.shape[0] >= 200 and img.shape[1] >= 600, img.shape
assert img[..., :3].std() > 0.05, "a blank image"
print(f"PASS: {p}: {size} bytes, {img.shape[1]}x{img.shape[0]} pixels")
PY
