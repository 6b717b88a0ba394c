#!/usr/bin/env bash
# bench/profile.sh — one bounded load against one switchboard worker, with a profiler on
# it: where a change's CPU goes, before and after (bench/README.md, "Profiling").
#
#   bench/profile.sh push|poll|h2c [none|perf|strace|callgrind|redis-perf]
#
#   push   wrk -t1 -c$CONNS, 1 KB message/sends with unique messageIds (bench/send.lua)
#          to a push-mode workspace whose agent is nginx answering a JSON-RPC result
#   poll   the same load to a poll-mode workspace: every request is one queued message
#   h2c    h2load -c16 -m10, a small message/send, to the push-mode workspace
#
# Prints requests/s and p99 (push, poll), switchboard's user and system CPU per request
# (/proc utime and stime ÷ requests), Redis CPU per request (INFO cpu) and the Redis
# commands per request (INFO commandstats). The profiler:
#   perf       perf record -g on switchboard for the load → $OUT/perf.data
#   strace     strace -c -f on switchboard for the load → $OUT/strace.txt (syscalls)
#   redis-perf perf record -g on the Redis server for the load → $OUT/redis.perf.data
#              (where Redis' CPU per request goes: Lua, dict and allocator work, I/O)
#   callgrind  switchboard under valgrind, counting only its worker thread
#              (--toggle-collect=worker_main), $N requests at 8 connections (h2c:
#              h2load -c8 -m10) →
#              $OUT/callgrind.out, and the inclusive instructions per request of the top
#              functions. Numbers are instructions, exact and load-independent.
# Compare user CPU, not totals: kernel time swings with the machine's load.
#
# Knobs (environment): DUR (8 s), CONNS (64), N (3000), OUT (.), BENCH_SB_BIN (another
# build). Needs wrk, nginx, redis-server (make bench installs them); h2load for h2c;
# perf, strace or valgrind for those profilers (apt-get install linux-perf strace
# valgrind). Everything on loopback, every process stopped on exit (bench/lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
mode=${1:-}
tool=${2:-none}
case $mode in push | poll | h2c) ;; *) bench_die "usage: bench/profile.sh push|poll|h2c [none|perf|strace|callgrind|redis-perf]" ;; esac
case $tool in none | perf | strace | callgrind | redis-perf) ;; *) bench_die "unknown profiler $tool" ;; esac
out_dir=$(realpath "${OUT:-.}")
bench_init profile
dur=${DUR:-8}
conns=${CONNS:-64}
n_cg=${N:-3000}
bench_need wrk nginx redis-server redis-cli curl
[ "$mode" = h2c ] && bench_need h2load
case $tool in none) ;; callgrind) bench_need valgrind ;; redis-perf) bench_need perf ;; *) bench_need "$tool" ;; esac

redis_port=$(free_port)
agent_port=$(free_port)
sb_port=$(free_port)
redis_start "$redis_port" "$work/redis"
redis_pid=$bench_pid
agent_conf "$work/agent" "$agent_port"
nginx_start "$work/agent"
wait_port "$agent_port" agent
if [ "$tool" = callgrind ]; then
  real_bin=$sb_bin
  sb_bin=$work/sb-under-valgrind
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s --collect-atstart=no --toggle-collect=worker_main %s "$@"\n' \
    "$out_dir/callgrind.out" "$(realpath "$real_bin")" >"$sb_bin"
  chmod +x "$sb_bin"
fi
sb_start "$sb_port" "redis://127.0.0.1:$redis_port" --threads 1
[ "$mode" = poll ] && dm=poll || dm=push
sb_register "$sb_port" '{"workspace_id":"prof","url":"http://127.0.0.1:'"$agent_port"'/a2a","delivery_mode":"'"$dm"'","max_concurrency":256}'
url="http://127.0.0.1:$sb_port/workspaces/prof/a2a"
body=$work/body.json
printf '%s' '{"jsonrpc":"2.0","id":"p","method":"message/send","params":{"message":{"kind":"message","role":"user","messageId":"m-prof","parts":[{"kind":"text","text":"hello"}]}}}' >"$body"

load() { # seconds — the mode's load; sets requests (and w_* for wrk)
  if [ "$mode" = h2c ]; then
    h2load -c16 -m10 -D "$1" -d "$body" -H 'content-type: application/json' \
      -H "authorization: Bearer $token" "$url" >"$work/h2load.out" 2>&1 || true
    requests=$(awk '/^requests:/ {print $8}' "$work/h2load.out")
    grep -E '^finished' "$work/h2load.out" || true
  else
    BENCH_RUN="p$RANDOM" bench_wrk "$url" "$conns" "$1"
    requests=$w_requests
    printf '%.0f req/s, p99 %.2f ms, non-2xx %s, errors %s\n' "$w_rps" "$(calc "$w_p99_us / 1000" 2)" "$w_non2xx" "$w_errors"
  fi
}

if [ "$tool" = callgrind ]; then
  # wrk (h2c: h2load -m10) at 8 connections until N decisions are logged, then a clean
  # stop flushes the counts
  if [ "$mode" = h2c ]; then
    (exec h2load -c8 -m10 -n "$((n_cg + 200))" -d "$body" -H 'content-type: application/json' \
      -H "authorization: Bearer $token" "$url" >/dev/null 2>&1) &
  else
    (BENCH_RUN="cg$RANDOM" exec wrk -t1 -c8 -d600s -s "$root/bench/send.lua" "$url" >/dev/null 2>&1) &
  fi
  wrk_pid=$!
  bench_pids+=("$wrk_pid")
  log=$work/switchboard-$sb_port.log
  for _ in $(seq 3000); do
    [ "$(grep -c '"event":"delivery"' "$log" || true)" -ge "$n_cg" ] && break
    sleep 0.2
  done
  bench_stop "$wrk_pid"
  kill -INT "$sb_pid"
  for _ in $(seq 200); do [ -d "/proc/$sb_pid" ] || break; sleep 0.1; done
  requests=$(grep -c '"event":"delivery"' "$log" || true)
  echo "callgrind: $requests requests → $out_dir/callgrind.out; inclusive instructions per request:"
  callgrind_annotate --inclusive=yes "$out_dir/callgrind.out" 2>/dev/null |
    awk -v n="$requests" 'match($0, /^ *[0-9,]+ +\( *[0-9.]+%\) +[^ ]+/) {
      c = $1; gsub(",", "", c); f = $0; sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, "", f); sub(/ .*/, "", f); sub(/^.*\/src\//, "src/", f)
      if (!(f in seen) && c / n >= 500) { seen[f] = 1; printf "%9.1fk  %s\n", c / n / 1000, f } }' | head -40
  exit 0
fi

load 2 >/dev/null # warm-up: connections to the agent, scripts loaded
redis_settle "$redis_port"
redis-cli -p "$redis_port" config resetstat >/dev/null
read -r u0 s0 < <(sed 's/^.*) //' "/proc/$sb_pid/stat" | awk '{print $12, $13}')
r0=$(redis_cpu "$redis_port")
prof_pid=""
case $tool in
  perf) perf record -g -F 2000 -p "$sb_pid" -o "$out_dir/perf.data" >/dev/null 2>&1 & prof_pid=$! ;;
  redis-perf) perf record -g -F 2000 -p "$redis_pid" -o "$out_dir/redis.perf.data" >/dev/null 2>&1 & prof_pid=$! ;;
  strace) strace -c -f -p "$sb_pid" -o "$out_dir/strace.txt" 2>/dev/null & prof_pid=$! ;;
esac
[ -n "$prof_pid" ] && bench_pids+=("$prof_pid")
load "$dur"
if [ -n "$prof_pid" ]; then
  kill -INT "$prof_pid" 2>/dev/null || true
  wait "$prof_pid" 2>/dev/null || true
fi
redis_settle "$redis_port"
read -r u1 s1 < <(sed 's/^.*) //' "/proc/$sb_pid/stat" | awk '{print $12, $13}')
r1=$(redis_cpu "$redis_port")
[ "${requests:-0}" -gt 0 ] || bench_die "no request was answered (see $work)"
awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v r="$(calc "$r1 - $r0" 6)" -v n="$requests" -v hz="$CLK_TCK" 'BEGIN {
  printf "%d requests: switchboard user %.1f + system %.1f = %.1f us/request; Redis %.1f us/request\n",
    n, u / hz * 1e6 / n, s / hz * 1e6 / n, (u + s) / hz * 1e6 / n, r * 1e6 / n }'
redis-cli -p "$redis_port" info commandstats | tr -d '\r' |
  awk -F'[:,=]' -v n="$requests" '/^cmdstat_/ && $3 > n / 100 {
    printf "  %-24s %6.3f calls/request %8.2f us/call\n", substr($1, 9), $3 / n, $7 }'
case $tool in
  perf) echo "perf: $out_dir/perf.data (perf report -i $out_dir/perf.data --no-children --sort dso,sym)" ;;
  redis-perf) echo "perf: $out_dir/redis.perf.data (perf report -i $out_dir/redis.perf.data --no-children --sort dso,sym)" ;;
  strace) echo "strace: $out_dir/strace.txt" && head -15 "$out_dir/strace.txt" ;;
esac
