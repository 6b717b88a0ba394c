#!/usr/bin/env bash
# bench/queue.sh — queue throughput: fallback appends per second on 1 Redis vs. a Redis
# Cluster of 3 masters (no replicas), same switchboard, same load.
#
#   single   one redis-server, switchboard --redis redis://…
#   cluster  three redis-server --cluster-enabled yes, joined by redis-cli --cluster
#            create, switchboard --redis redis+cluster://a,b,c
#   load     wrk with bench/send.lua: message/send to BENCH_WS_N poll-mode workspaces
#            (qb-0 …) in turn, a new messageId each, so every request is one append to a
#            workspace's queue (script on the workspace's master) plus its index update
#            and delivery note (the {sb} master and the workspace's master)
#
# Prints appends/s, non-2xx answers, p99 and the cores the redis-servers used per setup,
# and checks that the queues hold every message answered 200 (and at most the requests
# still in flight when wrk stopped). Set-up and clean-up are bench/lib.sh's: loopback, a
# temp dir, every process stopped on exit by PID. Knobs (environment): BENCH_DURATION_S
# (8), BENCH_THREADS (2: switchboard --threads, wrk -t2), BENCH_QUEUE_CONNS (32),
# BENCH_WS_N (32), BENCH_BODY_BYTES (1024).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
bench_init qbench

dur=${BENCH_DURATION_S:-8}
threads=${BENCH_THREADS:-2}
conns=${BENCH_QUEUE_CONNS:-32}
ws_n=${BENCH_WS_N:-32}
bench_need wrk redis-server redis-cli curl
export BENCH_WS=qb BENCH_WS_N=$ws_n

lost=0
run_setup() { # name redis-url node-port...
  local name=$1 url=$2 i
  shift 2
  local sb_port
  sb_port=$(free_port)
  sb_start "$sb_port" "$url" --threads "$threads"
  for i in $(seq 0 $((ws_n - 1))); do
    sb_register "$sb_port" "{\"workspace_id\":\"qb-$i\",\"delivery_mode\":\"poll\"}"
  done
  local cpu0 cpu1
  cpu0=$(redis_cpu "$@")
  BENCH_RUN="q$name" bench_wrk "http://127.0.0.1:$sb_port/" "$conns" "$dur" 2
  cpu1=$(redis_cpu "$@")
  # every 200 is a queued message: count them where they are
  local queued=0 n
  for i in $(seq 0 $((ws_n - 1))); do
    n=$(redis-cli -c -p "$1" zcard "sb:{qb-$i}:q:ready" | tr -d '\r') # -c follows MOVED
    queued=$((queued + n))
  done
  local ok=$((w_requests - w_non2xx)) verdict=""
  # wrk stops counting with up to $conns requests still in flight: they are queued too
  if [ "$queued" -lt "$ok" ] || [ "$queued" -gt $((ok + conns)) ]; then
    verdict="  LOST OR EXTRA"
    lost=1
  fi
  printf '%-8s %12.0f %10d %8d %9.2fms %12.2f   queued %d, answered 200 %d%s\n' "$name" \
    "$(calc "$ok * 1e6 / $w_duration_us")" "$w_non2xx" "$w_errors" "$(calc "$w_p99_us / 1000" 2)" \
    "$(calc "($cpu1 - $cpu0) * 1e6 / $w_duration_us" 2)" "$queued" "$ok" "$verdict"
  bench_stop "$sb_pid"
}

single=$(free_port)
redis_start "$single" "$work/single"
c1=$(free_port)
c2=$(free_port)
c3=$(free_port)
for p in "$c1" "$c2" "$c3"; do
  redis_start "$p" "$work/c$p" --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout 2000
done
redis-cli --cluster create "127.0.0.1:$c1" "127.0.0.1:$c2" "127.0.0.1:$c3" \
  --cluster-replicas 0 --cluster-yes >"$work/create.log" 2>&1 ||
  bench_die "redis-cli --cluster create failed: $(tail -3 "$work/create.log")"
for _ in $(seq 200); do
  redis-cli -p "$c1" cluster info | grep -q cluster_state:ok && break
  sleep 0.1
done

echo "fallback appends per second: wrk -t2 -c$conns -d${dur}s, $ws_n workspaces, switchboard --threads $threads, $(nproc) cores"
printf '%-8s %12s %10s %8s %11s %12s\n' setup 'appends/s' 'non-2xx' errors p99 'redis cores'
run_setup single "redis://127.0.0.1:$single" "$single"
run_setup cluster "redis+cluster://127.0.0.1:$c1,127.0.0.1:$c2,127.0.0.1:$c3" "$c1" "$c2" "$c3"
[ "$lost" = 0 ] || bench_die "a queue lost or gained messages (see LOST OR EXTRA above)"
