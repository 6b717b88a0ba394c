#!/usr/bin/env bash
# bench/run.sh — push-path benchmark: switchboard vs. nginx proxy_pass, same agent, same load.
#
#   agent   nginx answering every POST with a fixed JSON-RPC result (the fastest agent
#           there is, so the numbers measure the router, not the agent)
#   A       switchboard: POST /workspaces/ws-bench/a2a → push to the agent (HTTP/1.1
#           keep-alive pool), relayed with X-Delivery-Mode: push
#   B       nginx: proxy_pass to the same agent (HTTP/1.1 keep-alive upstream)
#   load    wrk (HTTP/1.1) and h2load (HTTP/2, h2c prior knowledge), the same body, the
#           same concurrency and the same duration against A and B
#
# Prints requests/s, failures and the ratio A/B for both protocols. Everything runs on
# loopback from a temp dir and is stopped on exit (by PID). Knobs (environment):
#   BENCH_DURATION_S (10)  BENCH_THREADS (2: switchboard threads = nginx proxy workers)
#   BENCH_WRK_CONNS (64)   BENCH_H2_CONNS (4)  BENCH_H2_STREAMS (32)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

dur=${BENCH_DURATION_S:-10}
threads=${BENCH_THREADS:-2}
wrk_conns=${BENCH_WRK_CONNS:-64}
h2_conns=${BENCH_H2_CONNS:-4}
h2_streams=${BENCH_H2_STREAMS:-32}

for tool in wrk nginx h2load redis-server curl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (make bench installs it)" >&2; exit 1; }
done
[ -x bin/switchboard ] || { echo "bench: bin/switchboard is missing (run make)" >&2; exit 1; }

work=$(mktemp -d /tmp/sb-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench: nothing listens on port $1" >&2
  return 1
}

redis_port=$(free_port); agent_port=$(free_port); proxy_port=$(free_port)
proxy_h2_port=$(free_port); sb_port=$(free_port)
token="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
user_line=""; [ "$(id -u)" = 0 ] && user_line="user root root;"

# ---- the agent: nginx answering a JSON-RPC result ----
mkdir -p "$work/agent" "$work/proxy"
reply='{"jsonrpc":"2.0","id":"bench-1","result":{"kind":"message","role":"agent","messageId":"bench-reply","parts":[{"kind":"text","text":"ok"}]}}'
card='{"name":"bench agent","url":"http://127.0.0.1:'"$agent_port"'/a2a","version":"1.0"}'
cat > "$work/agent/nginx.conf" <<EOF
$user_line
worker_processes 2;
error_log $work/agent/error.log warn;
pid $work/agent/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/agent/body;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$agent_port reuseport;
    default_type application/json;
    client_body_buffer_size 64k;
    location = /.well-known/agent-card.json { return 200 '$card'; }
    location / { return 200 '$reply'; }
  }
}
EOF

# ---- B: nginx proxy_pass to the agent, HTTP/1.1 and h2c ----
cat > "$work/proxy/nginx.conf" <<EOF
$user_line
worker_processes $threads;
error_log $work/proxy/error.log warn;
pid $work/proxy/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/proxy/body;
  proxy_temp_path $work/proxy/proxy;
  keepalive_requests 1000000;
  http2_max_concurrent_streams 128;
  upstream agent { server 127.0.0.1:$agent_port; keepalive 256; }
  server {
    listen 127.0.0.1:$proxy_port reuseport;
    listen 127.0.0.1:$proxy_h2_port http2 reuseport;
    client_body_buffer_size 64k;
    location / {
      proxy_pass http://agent;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }
  }
}
EOF

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --logfile "$work/redis.log" >/dev/null &
pids+=($!)
nginx -p "$work/agent" -c "$work/agent/nginx.conf" -g 'daemon off;' 2>>"$work/agent/stderr" &
pids+=($!)
nginx -p "$work/proxy" -c "$work/proxy/nginx.conf" -g 'daemon off;' 2>>"$work/proxy/stderr" &
pids+=($!)
wait_port "$redis_port"; wait_port "$agent_port"; wait_port "$proxy_port"

# ---- A: switchboard ----
bin/switchboard --listen "127.0.0.1:$sb_port" --redis "redis://127.0.0.1:$redis_port" \
  --admin-token "$token" --threads "$threads" --allow-upstream 127.0.0.0/8 \
  --log-format text >"$work/switchboard.log" 2>&1 &
pids+=($!)
wait_port "$sb_port"
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$sb_port/readyz")" = 200 ] && break
  sleep 0.05
done

curl -sS -o "$work/register.json" -w '%{http_code}' -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' \
  -d '{"workspace_id":"ws-bench","url":"http://127.0.0.1:'"$agent_port"'/a2a","delivery_mode":"push"}' \
  "http://127.0.0.1:$sb_port/registry/register" | grep -q '^200$' ||
  { echo "bench: register failed: $(cat "$work/register.json")" >&2; exit 1; }

body="$work/body.json"
printf '%s' '{"jsonrpc":"2.0","id":"bench-1","method":"message/send","params":{"message":{"kind":"message","role":"user","messageId":"bench-m1","parts":[{"kind":"text","text":"hello from the benchmark"}]}}}' > "$body"

sb_url="http://127.0.0.1:$sb_port/workspaces/ws-bench/a2a"
ng_url="http://127.0.0.1:$proxy_port/workspaces/ws-bench/a2a"
ng_h2_url="http://127.0.0.1:$proxy_h2_port/workspaces/ws-bench/a2a"

# Both paths must really deliver before anything is measured.
mode=$(curl -sS -D - -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  --data-binary @"$body" "$sb_url" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-delivery-mode"{print $2}')
[ "$mode" = push ] || { echo "bench: switchboard did not push (X-Delivery-Mode: '$mode')" >&2; tail -5 "$work/switchboard.log" >&2; exit 1; }
curl -sS --http2-prior-knowledge -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  --data-binary @"$body" "$ng_h2_url" | grep -q '^200$' || { echo "bench: nginx proxy h2c failed" >&2; exit 1; }

# ---- load ----
run_wrk() { # url token → "rps non2xx"
  BENCH_BODY_FILE="$body" BENCH_TOKEN="$2" wrk -t 2 -c "$wrk_conns" -d "${dur}s" --latency \
    -s "$root/bench/post.lua" "$1" > "$work/wrk.out" 2>&1 || true
  local rps bad
  rps=$(awk '/^Requests\/sec:/{print $2}' "$work/wrk.out")
  bad=$(awk '/Non-2xx or 3xx responses:/{print $5}' "$work/wrk.out")
  local p99
  p99=$(awk '$1=="99%"{print $2}' "$work/wrk.out")
  echo "${rps:-0} ${bad:-0} ${p99:-?}"
}
run_h2load() { # url token → "rps failed"
  local auth=()
  [ -n "$2" ] && auth=(-H "authorization: Bearer $2")
  h2load -t 2 -c "$h2_conns" -m "$h2_streams" -D "$dur" --warm-up-time=1 -d "$body" \
    -H 'content-type: application/json' "${auth[@]}" "$1" > "$work/h2load.out" 2>&1 || true
  local rps failed non2xx
  rps=$(awk '/^finished in/{print $4}' "$work/h2load.out")
  failed=$(awk '/^requests:/{print $10}' "$work/h2load.out")
  non2xx=$(awk '/^status codes:/{s=0; for(i=3;i<=NF;i+=2) if ($(i+1) != "2xx,") s+=$i; print s}' "$work/h2load.out")
  echo "${rps:-0} $(( ${failed:-0} + ${non2xx:-0} )) -"
}

echo "push-path benchmark: ${dur}s per run, $threads switchboard threads = $threads nginx workers"
echo "  HTTP/1.1: wrk -t2 -c$wrk_conns      HTTP/2: h2load -t2 -c$h2_conns -m$h2_streams (h2c)"
echo
read -r sb1 sb1bad sb1p99 < <(run_wrk "$sb_url" "$token")
read -r ng1 ng1bad ng1p99 < <(run_wrk "$ng_url" "")
read -r sb2 sb2bad _ < <(run_h2load "$sb_url" "$token")
read -r ng2 ng2bad _ < <(run_h2load "$ng_h2_url" "")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
printf '%-10s %14s %14s %8s   %s\n' protocol switchboard nginx ratio "failures (sb / nginx)"
printf '%-10s %14.0f %14.0f %8s   %s / %s   p99 %s / %s\n' HTTP/1.1 "$sb1" "$ng1" \
  "$(ratio "$sb1" "$ng1")" "$sb1bad" "$ng1bad" "$sb1p99" "$ng1p99"
printf '%-10s %14.0f %14.0f %8s   %s / %s\n' HTTP/2 "$sb2" "$ng2" "$(ratio "$sb2" "$ng2")" \
  "$sb2bad" "$ng2bad"
echo "(requests/s; ratio = switchboard / nginx; everything shares this machine's $(nproc) cores)"
