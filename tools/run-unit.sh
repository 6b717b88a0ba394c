#!/usr/bin/env bash
# Runs every cmocka unit-test binary given as arguments, from the repository root,
# and closes with one "unit: N passed, N failed" line summed over all of them.
# Exits non-zero when any test failed or any binary crashed.
set -u
passed=0 failed=0 crashed=0
for bin in "$@"; do
  out=$("$bin" 2>&1); rc=$?
  printf '%s\n' "$out"
  p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -1)
  f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -1)
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  if [ "$rc" -ne 0 ] && [ -z "$f" ]; then
    echo "!! $bin exited with status $rc before reporting its results"
    crashed=$((crashed + 1)); failed=$((failed + 1))
  fi
done
echo "unit: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$crashed" -eq 0 ]
