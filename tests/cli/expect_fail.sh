#!/usr/bin/env bash
# expect_fail.sh PHRASE COMMAND...: passes only if COMMAND exits non-zero, prints exactly one
# "monta: error:" line, and that line contains PHRASE.
phrase="$1"
shift
out="$("$@" 2>&1)"
rc=$?
echo "$out"
if [ $rc -eq 0 ]; then echo "expect_fail: command succeeded but should have failed"; exit 1; fi
n=$(grep -c "^monta: error:" <<<"$out" || true)
if [ "$n" -ne 1 ]; then echo "expect_fail: expected one 'monta: error:' line, got $n"; exit 1; fi
if ! grep "^monta: error:" <<<"$out" | grep -qF -- "$phrase"; then echo "expect_fail: error line lacks '$phrase'"; exit 1; fi
exit 0
