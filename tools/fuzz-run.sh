#!/usr/bin/env bash
# Runs every libFuzzer target for a fixed time and fails on any finding.
#
#   tools/fuzz-run.sh SECONDS BUILD_DIR TARGET...
#
# Each target BUILD_DIR/fuzz/TARGET starts from its seeds in tests/corpus/TARGET/ (read
# only) and a working corpus BUILD_DIR/corpus/TARGET/ (what it discovers; kept between
# runs, never committed). A crash, leak, timeout (-timeout, s per input), out-of-memory
# (-rss_limit_mb) or sanitizer report stops that target with a non-zero status; its input
# is left in BUILD_DIR/artifacts/TARGET/ and the log in BUILD_DIR/logs/TARGET.log. Every
# finding is to become tests/corpus/TARGET/crash-<what> once fixed, so the replay in
# `make check` keeps it fixed. Ends with one line per target (executions, coverage,
# features, corpus size) and exits non-zero if any target failed.
set -u
secs=$1 build=$2
shift 2
failed=() summary=()
for t in "$@"; do
  bin=$build/fuzz/$t seeds=tests/corpus/$t work=$build/corpus/$t art=$build/artifacts/$t
  log=$build/logs/$t.log
  mkdir -p "$work" "$art" "$build/logs"
  [ -d "$seeds" ] || { echo "fuzz: no seed corpus $seeds for $t"; failed+=("$t"); continue; }
  echo "fuzz: $t for ${secs}s"
  "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$art/" "$work" "$seeds" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
  line=$(printf '%-10s execs %-9s cov %-6s ft %-6s corpus %s' "$t" "${execs:-?}" "${cov:-?}" \
    "${ft:-?}" "${corp:-?}")
  if [ "$rc" -ne 0 ]; then
    line="$line  FAILED (exit $rc, see $log)"
    failed+=("$t")
    grep -E 'ERROR: |SUMMARY: |fuzz property failed|Test unit written' "$log" | head -5
  fi
  summary+=("$line")
done
echo "---- fuzz summary (${secs}s per target) ----"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#summary[@]} targets clean"
