#!/usr/bin/env bash
# bench/queue.sh — queue throughput: fallback appends per second on 1 Redis vs. a Redis
# Cluster of 3 masters (no replicas), same switchboard, same load.
#
#   single   one redis-server, switchboard --redis redis://…
#   cluster  three redis-server --cluster-enabled yes, joined by redis-cli --cluster
#            create, switchboard --redis redis+cluster://a,b,c
#   load     wrk with bench/queue.lua: message/send to BENCH_WS_N poll-mode workspaces in
#            turn, a new messageId each, so every request is one append to a workspace's
#            queue (script on the workspace's master) plus its index update and delivery
#            note (the {sb} master and the workspace's master)
#
# Prints appends/s, non-2xx answers, p99 and the cores the redis-servers used per setup, and checks that the queues hold
# every message answered 200 (and at most the requests still in flight when wrk stopped). Everything runs on loopback from a temp dir and is
# stopped on exit (by PID). Knobs (environment): BENCH_DURATION_S (10), BENCH_THREADS (2:
# switchboard --threads), BENCH_WRK_CONNS (32), BENCH_WS_N (32).
set -euo pipefail
cd "$(dirname "$0")/.."

dur=${BENCH_DURATION_S:-10}
threads=${BENCH_THREADS:-2}
conns=${BENCH_WRK_CONNS:-32}
ws_n=${BENCH_WS_N:-32}

for tool in wrk redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (make bench installs it)" >&2; exit 1; }
done
[ -x bin/switchboard ] || { echo "bench: bin/switchboard is missing (run make)" >&2; exit 1; }

work=$(mktemp -d /tmp/sb-qbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A free port whose cluster bus port (+10000) is free and valid too.
port_pair() {
  python3 - <<'PY'
import random, socket
for _ in range(500):
    p = random.randint(20000, 39999)
    ok = True
    for q in (p, p + 10000):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", q))
        except OSError:
            ok = False
        s.close()
    if ok:
        print(p)
        break
PY
}
wait_pong() {
  for _ in $(seq 200); do
    [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  echo "bench: redis-server :$1 does not answer" >&2
  return 1
}
redis_start() { # port dir extra...
  local port=$1 dir=$2; shift 2
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize no --logfile "$dir/log" "$@" &
  pids+=($!)
  wait_pong "$port"
}

token="qbench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export BENCH_TOKEN=$token BENCH_WS_N=$ws_n

# CPU seconds (user + sys) used so far by the redis-servers on the given ports.
redis_cpu() {
  local total=0 p v
  for p in "$@"; do
    v=$(redis-cli -p "$p" info cpu | tr -d '\r' |
      awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.3f", s}')
    total=$(echo "$total + $v" | bc -l)
  done
  echo "$total"
}

run_setup() { # name redis-url node-port...
  local name=$1 url=$2; shift 2
  local sb_port
  sb_port=$(port_pair)
  bin/switchboard --listen "127.0.0.1:$sb_port" --redis "$url" --admin-token "$token" \
    --threads "$threads" >"$work/sb-$name.log" 2>&1 &
  local sb_pid=$!
  pids+=("$sb_pid")
  for _ in $(seq 200); do
    curl -fs "http://127.0.0.1:$sb_port/readyz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  for i in $(seq 0 $((ws_n - 1))); do
    curl -fs -o /dev/null -X POST "http://127.0.0.1:$sb_port/registry/register" \
      -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      -d "{\"workspace_id\":\"qb-$i\",\"delivery_mode\":\"poll\"}"
  done
  local out cpu0 cpu1
  cpu0=$(redis_cpu "$@")
  out=$(wrk -t2 -c"$conns" -d"${dur}s" -s bench/queue.lua "http://127.0.0.1:$sb_port" | grep '^RESULT')
  local requests non2xx errors dur_us p99
  requests=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$out")
  non2xx=$(sed 's/.*non2xx=\([0-9]*\).*/\1/' <<<"$out")
  errors=$(sed 's/.*errors=\([0-9]*\).*/\1/' <<<"$out")
  dur_us=$(sed 's/.*duration_us=\([0-9]*\).*/\1/' <<<"$out")
  p99=$(sed 's/.*p99_us=\([0-9]*\).*/\1/' <<<"$out")
  cpu1=$(redis_cpu "$@")
  # every 200 is a queued message: count them where they are
  local queued=0 n
  for i in $(seq 0 $((ws_n - 1))); do
    n=$(redis-cli -c -p "$1" zcard "sb:{qb-$i}:q:ready") # -c follows MOVED
    queued=$((queued + n))
  done
  local ok=$((requests - non2xx))
  # wrk stops counting with up to $conns requests still in flight: they are queued too
  printf '%-8s %12.0f %10d %8d %9.2fms %12.2f   queued %d, answered 200 %d%s\n' "$name" \
    "$(echo "$ok / ($dur_us / 1000000)" | bc -l)" "$non2xx" "$errors" \
    "$(echo "$p99 / 1000" | bc -l)" "$(echo "($cpu1 - $cpu0) / ($dur_us / 1000000)" | bc -l)" \
    "$queued" "$ok" \
    "$([ "$queued" -ge "$ok" ] && [ "$queued" -le $((ok + conns)) ] || echo '  LOST OR EXTRA')"
  kill "$sb_pid"
  wait "$sb_pid" 2>/dev/null || true
}

single=$(port_pair)
redis_start "$single" "$work/single"
c1=$(port_pair); c2=$(port_pair); c3=$(port_pair)
for p in "$c1" "$c2" "$c3"; do
  redis_start "$p" "$work/c$p" --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout 2000
done
redis-cli --cluster create "127.0.0.1:$c1" "127.0.0.1:$c2" "127.0.0.1:$c3" \
  --cluster-replicas 0 --cluster-yes >"$work/create.log" 2>&1
for _ in $(seq 200); do
  redis-cli -p "$c1" cluster info | grep -q cluster_state:ok && break
  sleep 0.1
done

echo "fallback appends per second: wrk -t2 -c$conns -d${dur}s, $ws_n workspaces, switchboard --threads $threads, $(nproc) cores"
printf '%-8s %12s %10s %8s %11s %12s\n' setup 'appends/s' 'non-2xx' errors p99 'redis cores'
run_setup single "redis://127.0.0.1:$single" "$single"
run_setup cluster "redis+cluster://127.0.0.1:$c1,127.0.0.1:$c2,127.0.0.1:$c3" "$c1" "$c2" "$c3"
