#!/usr/bin/env bash
# Captures seed corpora for the fuzz targets from a run of the integration suite.
#
#   tools/capture-corpus.sh [PYTEST_ARGS...]     (after `make all peers`)
#
# Runs tests/integration with tools/corpus-capture/ on PYTHONPATH, so the callers'
# HTTP/1.1 requests and the fake agents' HTTP/1.1 responses are recorded, then copies the
# distinct ones into tests/corpus/http1/cap-* and tests/corpus/upstream/cap-* (at most
# CAPTURE_MAX per target, spread evenly over the files sorted by size, so the committed
# corpus stays small yet holds small and large requests alike). fuzz_upstream.c reads a
# selector byte first: captured answers get 0 (a buffered POST, protocol auto).
# Re-running it replaces the cap-* files.
set -euo pipefail
cd "$(dirname "$0")/.."
max=${CAPTURE_MAX:-150}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
SB_CAPTURE_DIR=$tmp PYTHONPATH="$PWD/tools/corpus-capture${PYTHONPATH:+:$PYTHONPATH}" \
  SB_BIN="$PWD/bin" SB_PEERS="$PWD/build/peers" \
  /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration "$@" || true
for kind in http1 upstream; do
  mkdir -p "tests/corpus/$kind"
  rm -f "tests/corpus/$kind"/cap-*
  [ -d "$tmp/$kind" ] || continue
  mapfile -t files < <(ls -S -r "$tmp/$kind")
  total=${#files[@]} n=0
  step=$(( (total + max - 1) / max )); [ "$step" -ge 1 ] || step=1
  for ((i = 0; i < total; i += step)); do
    f=${files[$i]}
    if [ "$kind" = upstream ]; then
      { printf '\0'; cat "$tmp/$kind/$f"; } >"tests/corpus/$kind/cap-$f"
    else
      cp "$tmp/$kind/$f" "tests/corpus/$kind/cap-$f"
    fi
    n=$((n + 1))
  done
  echo "capture: $n file(s) in tests/corpus/$kind (of $total distinct)"
done
