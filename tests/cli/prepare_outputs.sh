#!/usr/bin/env bash
# prepare_outputs.sh MONTA WORK: `monta prepare-data` never destroys what exists: the output may not be the
# input (however spelled), may not replace an existing file without --force, may not land inside a checkpoint
# directory; each refusal is one "monta: error:" line and leaves the files as they were.
monta=$1 w=$2
rm -rf "$w"; mkdir -p "$w/ckpt/checkpoints/step_00000002"
fail() { echo "FAIL: $*"; exit 1; }
expect() {  # PHRASE CMD...: non-zero exit, one error line with PHRASE
  local phrase=$1; shift
  local out; out=$("$@" 2>&1) && { echo "$out"; fail "succeeded: $*"; }
  [ "$(grep -c '^monta: error:' <<<"$out")" -eq 1 ] || { echo "$out"; fail "expected one error line: $*"; }
  grep '^monta: error:' <<<"$out" | grep -qF -- "$phrase" || { echo "$out"; fail "error lacks '$phrase'"; }
}
printf 'some text to tokenize, byte by byte\n' > "$w/in.txt"
cp "$w/in.txt" "$w/in.orig"
expect "is the input" "$monta" prepare-data --input "$w/in.txt" --output "$w/in.txt" --format text
expect "is the input" "$monta" prepare-data --input "$w/in.txt" --output "$w/./sub/../in.txt" --format text --force
cmp -s "$w/in.txt" "$w/in.orig" || fail "the input was changed"
"$monta" prepare-data --input "$w/in.txt" --output "$w/out.h5" > /dev/null 2>&1 || fail "first conversion"
cp "$w/out.h5" "$w/out.orig"
printf 'other text\n' > "$w/other.txt"
expect "--output $w/out.h5 exists; pass --force to replace it" "$monta" prepare-data --input "$w/other.txt" --output "$w/out.h5"
cmp -s "$w/out.h5" "$w/out.orig" || fail "the existing output was changed"
"$monta" prepare-data --input "$w/other.txt" --output "$w/out.h5" --force > /dev/null 2>&1 || fail "--force"
! cmp -s "$w/out.h5" "$w/out.orig" || fail "--force did not replace the output"
expect "lies inside the checkpoint directory" "$monta" prepare-data --input "$w/in.txt" \
  --output "$w/ckpt/checkpoints/step_00000002/data.h5"
[ -z "$(ls "$w/ckpt/checkpoints/step_00000002")" ] || fail "wrote into the checkpoint directory"
[ -z "$(find "$w" -name '*.tmp*')" ] || fail "temporary files left behind"
echo "PASS: prepare-data outputs"
