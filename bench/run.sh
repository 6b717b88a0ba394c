#!/usr/bin/env bash
# bench/run.sh — the issue-11 benchmark: every performance target of switchboard in one
# bounded run, printed as one table (absolute numbers, ratio, target, met/MISSED).
#
#   agent     nginx answering every POST with a fixed JSON-RPC result (and the agent card
#             for the registration probe): the same agent behind every front
#   fronts    switchboard --threads 1 (POST /workspaces/ws-push/a2a, push), nginx
#             proxy_pass with a keep-alive upstream (worker_processes 1, HTTP/1.1 and h2c
#             listeners), HAProxy (nbthread 1, http-reuse always)
#   load      wrk -t1 -c64 with bench/send.lua: a ~1 KB message/send, a new messageId per
#             request; h2load -c16 -m10 (h2c prior knowledge) for the HTTP/2 row
#   rows      1 push HTTP/1.1: requests/s, CPU µs per request (/proc utime+stime of the
#               front's processes ÷ requests), p99 added over wrk direct to the agent
#             2 Redis CPU (INFO cpu) and memory (INFO used_memory) per pushed message
#             3 h2c requests/s vs nginx
#             4 poll path (a workspace registered poll): requests/s vs push, Redis CPU
#               per queued message
#             5 drain: BENCH_DRAIN_N messages queued while the agent is down (connection
#               refused), then the agent started and a heartbeat sent: drain msg/s vs
#               enqueue msg/s, timed from the queue depth in Redis (bench/qwatch.py)
#             6 BENCH_IDLE_CONNS keep-alive connections that each did one message/send and
#               sit idle (bench/idle.py): switchboard's VmRSS above its base, and nginx's
#
# bench/README.md says how each number is computed. Exit status: 0 when every row got a
# valid number (targets met or not; BENCH_STRICT=1 makes a missed target exit 3), 1 with a
# message when a precondition failed (a tool missing, switchboard did not push, a load
# saw errors, the queue did not fill or drain, connections were refused, …).
#
# Knobs (environment): BENCH_DURATION_S (8) per load, BENCH_WARMUP_S (1) before each,
# BENCH_WRK_CONNS (64), BENCH_WRK_THREADS (1), BENCH_THREADS (1: switchboard --threads =
# nginx worker_processes = HAProxy nbthread), BENCH_AGENT_WORKERS (1), BENCH_BODY_BYTES
# (1024), BENCH_H2_CONNS (16), BENCH_H2_STREAMS (10), BENCH_DRAIN_N (60000:
# a 20,000-message drain lasts ~0.6 s and its ratio swung 0.5–2× on a loaded machine),
# BENCH_DRAIN_TIMEOUT_S (120), BENCH_IDLE_CONNS (10000), BENCH_ROWS ("push h2 poll drain
# idle": the sections to run; push is needed by poll), BENCH_ROUNDS (1: rounds of the push
# and h2c loads, front after front; the table shows medians), BENCH_SB_ARGS (more switchboard
# flags, split on spaces), BENCH_REDIS_ARGS (more redis-server flags, e.g. "--appendonly
# yes"), BENCH_STRICT.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
bench_init bench

dur=${BENCH_DURATION_S:-8}
warm=${BENCH_WARMUP_S:-1}
conns=${BENCH_WRK_CONNS:-64}
wrk_threads=${BENCH_WRK_THREADS:-1}
threads=${BENCH_THREADS:-1}
agent_workers=${BENCH_AGENT_WORKERS:-1}
body_bytes=${BENCH_BODY_BYTES:-1024}
h2_conns=${BENCH_H2_CONNS:-16}
h2_streams=${BENCH_H2_STREAMS:-10}
drain_n=${BENCH_DRAIN_N:-60000}
drain_timeout=${BENCH_DRAIN_TIMEOUT_S:-120}
idle_n=${BENCH_IDLE_CONNS:-10000}
rounds=${BENCH_ROUNDS:-1}
rows=" ${BENCH_ROWS:-push h2 poll drain idle} "
want() { [[ $rows == *" $1 "* ]]; }
if want poll && ! want push; then bench_die "BENCH_ROWS: poll is measured against push"; fi
export BENCH_BODY_BYTES=$body_bytes

bench_need wrk nginx h2load redis-server redis-cli curl awk
[ -x "$root/build/tools/bin/haproxy" ] && PATH="$root/build/tools/bin:$PATH"
bench_need haproxy

# 10k idle connections need 10k descriptors in switchboard, in nginx and in the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
if want idle && [ "$nofile" != unlimited ] && [ "$nofile" -lt $((idle_n + 512)) ]; then
  bench_die "RLIMIT_NOFILE hard limit $nofile < BENCH_IDLE_CONNS $idle_n + 512 (raise it, or lower BENCH_IDLE_CONNS)"
fi

redis_port=$(free_port); agent_port=$(free_port); proxy_port=$(free_port)
proxy_h2_port=$(free_port); haproxy_port=$(free_port); sb_port=$(free_port)
drain_port=$(free_port)
problems=()
problem() { problems+=("$*"); echo "bench: $*" >&2; }

agent_conf "$work/agent" "$agent_port"

# ---- nginx proxy_pass to the agent, HTTP/1.1 and h2c: proxy_conf dir port h2-port ----
proxy_conf() {
  local dir=$1
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes $threads;
worker_rlimit_nofile $nofile;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections $((idle_n + 1024)); }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  http2_max_concurrent_streams 128;
  upstream agent { server 127.0.0.1:$agent_port; keepalive 256; }
  server {
    listen 127.0.0.1:$2 reuseport;
    listen 127.0.0.1:$3 http2 reuseport;
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
}
proxy_conf "$work/proxy" "$proxy_port" "$proxy_h2_port"

# ---- HAProxy in front of the same agent ----
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread $threads
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$haproxy_port
  default_backend agent
backend agent
  http-reuse always
  server a 127.0.0.1:$agent_port
EOF

read -r -a redis_extra <<<"${BENCH_REDIS_ARGS:-}"
redis_start "$redis_port" "$work/redis" "${redis_extra[@]}"
nginx_start "$work/agent"
agent_pid=$bench_pid
nginx_start "$work/proxy"
proxy_pid=$bench_pid
haproxy -c -q -f "$work/haproxy.cfg" || bench_die "haproxy rejects $work/haproxy.cfg"
bench_bg haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.stderr"
haproxy_pid=$bench_pid
wait_port "$agent_port" agent
wait_port "$proxy_port" "nginx proxy"
wait_port "$haproxy_port" haproxy

# ---- switchboard: push and poll workspaces on the agent ----
read -r -a sb_extra <<<"${BENCH_SB_ARGS:-}"
sb_start "$sb_port" "redis://127.0.0.1:$redis_port" --threads "$threads" --idle-timeout-s 300 "${sb_extra[@]}"
# max_concurrency 256: the h2c load keeps 160 requests in flight, past the default cap of
# 64 per endpoint (--max-inflight-per-endpoint), which would answer the rest "busy" from
# the queue; an operator raises it the same way for an agent that takes that many.
sb_register "$sb_port" '{"workspace_id":"ws-push","url":"http://127.0.0.1:'"$agent_port"'/a2a","delivery_mode":"push","max_concurrency":256}'
sb_register "$sb_port" '{"workspace_id":"ws-poll","delivery_mode":"poll"}'

# One body of body_bytes with a fixed messageId, for curl, h2load and idle.py.
body="$work/body.json"
"$PY" - "$body" "$body_bytes" <<'PY'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
msg = {"jsonrpc": "2.0", "id": "bench-fixed", "method": "message/send", "params": {"message": {
    "kind": "message", "role": "user", "messageId": "bench-fixed",
    "parts": [{"kind": "text", "text": ""}]}}}
base = len(json.dumps(msg, separators=(",", ":")))
msg["params"]["message"]["parts"][0]["text"] = "x" * max(0, n - base)
open(path, "w").write(json.dumps(msg, separators=(",", ":")))
PY

sb_url="http://127.0.0.1:$sb_port/workspaces/ws-push/a2a"
poll_url="http://127.0.0.1:$sb_port/workspaces/ws-poll/a2a"
ng_url="http://127.0.0.1:$proxy_port/workspaces/ws-push/a2a"
ng_h2_url="http://127.0.0.1:$proxy_h2_port/workspaces/ws-push/a2a"
ha_url="http://127.0.0.1:$haproxy_port/workspaces/ws-push/a2a"
agent_url="http://127.0.0.1:$agent_port/workspaces/ws-push/a2a"

# ---- preconditions: every path answers, switchboard really pushes / queues ----
delivery_mode() { # url [extra curl args] → the X-Delivery-Mode of one POST of $body
  local url=$1
  shift
  curl -sS -D - -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    --data-binary @"$body" "$@" "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-delivery-mode"{print $2}'
}
status_of() { # url [extra curl args] → HTTP status of one POST of $body
  local url=$1
  shift
  curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @"$body" "$@" "$url"
}
m=$(delivery_mode "$sb_url")
[ "$m" = push ] || { tail -5 "$work/switchboard-$sb_port.log" >&2; bench_die "switchboard did not push to the agent (X-Delivery-Mode: '$m')"; }
m=$(delivery_mode "$sb_url" --http2-prior-knowledge)
[ "$m" = push ] || bench_die "switchboard over h2c did not push (X-Delivery-Mode: '$m')"
m=$(delivery_mode "$poll_url")
[ "$m" = poll ] || bench_die "switchboard did not queue for the poll workspace (X-Delivery-Mode: '$m')"
for u in "$agent_url" "$ng_url" "$ha_url"; do
  [ "$(status_of "$u")" = 200 ] || bench_die "POST $u did not answer 200"
done
[ "$(status_of "$ng_h2_url" --http2-prior-knowledge)" = 200 ] || bench_die "nginx h2c proxy did not answer 200"

# ---- measuring ----
now_s() { date +%s.%N; }
judge() { awk -v v="$1" -v l="$3" "BEGIN { print (v $2 l) ? \"met\" : \"MISSED\" }"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx\n", a / b; else print "n/a" }'; }
runs=()

# One wrk load against a front: warm-up, then the measured run with CPU of the front's
# processes (PIDs in $3…) and Redis CPU/memory around it. Sets w_* (bench_wrk; w_warm:
# the warm-up's answers; w_busy: the whole machine's busy share during the load), cpu_us
# (front CPU ÷ requests), r_cpu_s (Redis CPU s), r_mem (used_memory delta B), r_wall_s.
measure_wrk() { # name url pid...
  local name=$1 url=$2
  shift 2
  w_warm=0
  if [ "$warm" != 0 ]; then
    BENCH_RUN="w$name" bench_wrk "$url" "$conns" "$warm" "$wrk_threads"
    w_warm=$w_requests
  fi
  local c0 c1 rc0 rc1 rm0 rm1 t0 t1 m0 m1
  c0=$(proc_cpu_us "$@"); rc0=$(redis_cpu "$redis_port"); rm0=$(redis_info "$redis_port" memory used_memory)
  t0=$(now_s)
  m0=$(machine_ticks)
  BENCH_RUN="$name" bench_wrk "$url" "$conns" "$dur" "$wrk_threads"
  m1=$(machine_ticks)
  w_busy=$(busy_pct "$m0" "$m1")
  redis_settle "$redis_port"
  c1=$(proc_cpu_us "$@"); rc1=$(redis_cpu "$redis_port"); rm1=$(redis_info "$redis_port" memory used_memory)
  t1=$(now_s)
  cpu_us=$(calc "($c1 - $c0) / ($w_requests > 0 ? $w_requests : 1)")
  r_cpu_s=$(calc "$rc1 - $rc0" 6)
  r_mem=$((rm1 - rm0))
  r_wall_s=$(calc "$t1 - $t0" 3)
  runs+=("$(printf '%-16s wrk    %9d req %10.0f req/s  non-2xx %d  errors %d  p50 %.2f ms  p99 %.2f ms  CPU %s us/req  machine %s%% busy' \
    "$name" "$w_requests" "$w_rps" "$w_non2xx" "$w_errors" "$(calc "$w_p50_us / 1000" 2)" \
    "$(calc "$w_p99_us / 1000" 2)" "$cpu_us" "$w_busy")")
  if [ "$w_non2xx" != 0 ] || [ "$w_errors" != 0 ] || [ "$w_requests" = 0 ]; then
    tail -3 "$work/switchboard-$sb_port.log" >&2
    bench_die "$name: $w_requests answers, $w_non2xx non-2xx, $w_errors socket errors"
  fi
}

# h2load against a front: warm-up run, then the measured one. Sets h_rps h_done h_bad cpu_us.
measure_h2() { # name url auth pid...
  local name=$1 url=$2 auth=$3
  shift 3
  local args=(-t1 -c "$h2_conns" -m "$h2_streams" -d "$body" -H 'content-type: application/json')
  [ -n "$auth" ] && args+=(-H "authorization: Bearer $auth")
  [ "$warm" != 0 ] && { h2load "${args[@]}" -D "$warm" "$url" >/dev/null 2>&1 || true; }
  local c0 c1
  c0=$(proc_cpu_us "$@")
  h2load "${args[@]}" -D "$dur" "$url" >"$work/h2load-$name.out" 2>&1 || true
  c1=$(proc_cpu_us "$@")
  h_rps=$(awk '/^finished in/ {print $4; exit}' "$work/h2load-$name.out")
  h_done=$(awk '/^requests:/ {print $8; exit}' "$work/h2load-$name.out")
  h_bad=$(awk '/^requests:/ {f = $10 + $12 + $14} /^status codes:/ {for (i = 3; i <= NF; i += 2) if ($(i + 1) != "2xx,") f += $i} END {print f + 0}' "$work/h2load-$name.out")
  h_rps=${h_rps:-0}
  h_done=${h_done:-0}
  cpu_us=$(calc "($c1 - $c0) / ($h_done > 0 ? $h_done : 1)")
  runs+=("$(printf '%-16s h2load %9d req %10.0f req/s  failed/non-2xx %d  CPU %s us/req' "$name" "$h_done" "$h_rps" "$h_bad" "$cpu_us")")
  if [ "$h_bad" != 0 ] || [ "$h_done" = 0 ]; then
    cat "$work/h2load-$name.out" >&2
    bench_die "$name: h2load $h_done done, $h_bad failed or non-2xx"
  fi
}

table=()
row() { # id what switchboard reference ratio target mark
  table+=("$(printf '%-2s %-45s %-22s %-26s %-6s %-16s %s' "$@")")
}
fmt_int() { printf '%.0f' "$1"; }
# medians "a1 b1 …" "a2 b2 …" … → the median of each column (the mean of the middle two
# for an even count)
medians() {
  printf '%s\n' "$@" | awk '{ for (i = 1; i <= NF; i++) v[i, NR] = $i; nf = NF }
    END { for (i = 1; i <= nf; i++) { n = 0
        for (r = 1; r <= NR; r++) a[++n] = v[i, r]
        for (x = 2; x <= n; x++) { t = a[x]; for (y = x - 1; y >= 1 && a[y] > t; y--) a[y + 1] = a[y]; a[y + 1] = t }
        m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        printf "%s%s", (i > 1 ? " " : ""), m }
      print "" }'
}

echo "switchboard benchmark (issue 11): $(nproc) cores shared by load generator, fronts, agent and Redis"
echo "  wrk -t$wrk_threads -c$conns -d${dur}s (+${warm}s warm-up), ${body_bytes} B message/send, unique messageIds;" \
  "switchboard --threads $threads, nginx worker_processes $threads, HAProxy nbthread $threads"
[ "$rounds" = 1 ] || echo "  $rounds rounds of the push and h2c loads: the table shows the medians"
echo

# direct to the agent: the p99 baseline (again after the fronts; the lower one counts,
# a load spike of the shared machine should not hide the fronts' latency), and Redis's
# idle background (its own cron and switchboard's timers), subtracted from the Redis rows
measure_wrk direct "$agent_url" "$agent_pid"
direct_rps=$w_rps
direct_p99=$w_p99_us
redis_bg_us_per_s=$(calc "$r_cpu_s * 1e6 / $r_wall_s" 2)

if want push; then
  p0=$(sb_metric "$sb_port" switchboard_messages_total 'mode="push"')
  q0=$(sb_metric "$sb_port" switchboard_messages_total 'mode="poll"')
  # BENCH_ROUNDS rounds of switchboard, nginx, HAProxy in turn; each number is the median
  sb_l=() ng_l=() ha_l=()
  sb_req=0 sb_redis_l=() sb_mem_l=()
  for rnd in $(seq "$rounds"); do
    sfx=""
    [ "$rounds" = 1 ] || sfx="-$rnd"
    measure_wrk "sb-push$sfx" "$sb_url" "$sb_pid"
    sb_l+=("$w_rps $cpu_us $w_p99_us")
    sb_req=$((sb_req + w_requests))
    sb_redis_l+=("$(calc "($r_cpu_s * 1e6 - $redis_bg_us_per_s * $r_wall_s) / $w_requests")")
    sb_mem_l+=("$(calc "$r_mem / $w_requests" 0)")
    measure_wrk "nginx$sfx" "$ng_url" "$proxy_pid"
    ng_l+=("$w_rps $cpu_us $w_p99_us")
    measure_wrk "haproxy$sfx" "$ha_url" "$haproxy_pid"
    ha_l+=("$w_rps $cpu_us $w_p99_us")
  done
  read -r sb_rps sb_cpu sb_p99 < <(medians "${sb_l[@]}")
  read -r ng_rps ng_cpu ng_p99 < <(medians "${ng_l[@]}")
  read -r ha_rps ha_cpu ha_p99 < <(medians "${ha_l[@]}")
  sb_redis_us=$(medians "${sb_redis_l[@]}")
  sb_redis_b=$(medians "${sb_mem_l[@]}")
  p1=$(sb_metric "$sb_port" switchboard_messages_total 'mode="push"')
  q1=$(sb_metric "$sb_port" switchboard_messages_total 'mode="poll"')
  [ "$q1" = "$q0" ] || problem "sb-push: $((q1 - q0)) messages fell back to poll during the push runs"
  [ $((p1 - p0)) -ge "$sb_req" ] || problem "sb-push: switchboard counted $((p1 - p0)) pushes for $sb_req answers"
  # What a pushed message leaves behind: the TTL of its record's key (a bucket of pushed
  # records, or the per-message record hash of older versions), when it has one.
  rec_key=$({ redis-cli -p "$redis_port" --scan --pattern 'sb:{ws-push}:pb:*' 2>/dev/null || true; } | head -1)
  [ -n "$rec_key" ] || rec_key=$({ redis-cli -p "$redis_port" --scan --pattern 'sb:{ws-push}:dr:*' 2>/dev/null || true; } | head -1)
  rec_ttl=-2
  [ -n "$rec_key" ] && rec_ttl=$(redis-cli -p "$redis_port" pttl "$rec_key" | tr -d '\r')
  case $rec_ttl in
  -2) rec_note="no record key" ;;
  -1) rec_note="record key without TTL" ;;
  *) rec_note="record TTL $(calc "$rec_ttl / 1000" 0) s" ;;
  esac

  measure_wrk direct-again "$agent_url" "$agent_pid"
  [ "$w_p99_us" -lt "$direct_p99" ] && direct_p99=$w_p99_us

  sb_add=$(calc "($sb_p99 - $direct_p99) / 1000" 2)
  ng_add=$(calc "($ng_p99 - $direct_p99) / 1000" 2)
  ha_add=$(calc "($ha_p99 - $direct_p99) / 1000" 2)
  row 1 "push HTTP/1.1 requests/s" "$(fmt_int "$sb_rps")" "nginx $(fmt_int "$ng_rps")" \
    "$(ratio "$sb_rps" "$ng_rps")" ">= 1.0x nginx" "$(judge "$sb_rps" '>=' "$ng_rps")"
  row "" "  same, vs HAProxy" "$(fmt_int "$sb_rps")" "haproxy $(fmt_int "$ha_rps")" \
    "$(ratio "$sb_rps" "$ha_rps")" "-" "info"
  row 1 "push CPU us per request (front only)" "$sb_cpu" "nginx $ng_cpu" \
    "$(ratio "$sb_cpu" "$ng_cpu")" "<= 1.2x nginx" "$(judge "$sb_cpu" '<=' "$(calc "1.2 * $ng_cpu" 3)")"
  row "" "  same, vs HAProxy" "$sb_cpu" "haproxy $ha_cpu" "$(ratio "$sb_cpu" "$ha_cpu")" "-" "info"
  # sb's added p99 <= nginx's is sb's p99 <= nginx's (one baseline): the ratio is of the p99s
  p99s() { printf '%+.2f (p99 %.2f)' "$1" "$(calc "$2 / 1000" 2)"; }
  row 1 "push p99 added over direct, ms" "$(p99s "$sb_add" "$sb_p99")" "nginx $(p99s "$ng_add" "$ng_p99")" \
    "$(ratio "$sb_p99" "$ng_p99")" "<= nginx's" "$(judge "$sb_add" '<=' "$ng_add")"
  row "" "  (direct p99 $(calc "$direct_p99 / 1000" 2) ms; ratio of p99s)" "$(p99s "$sb_add" "$sb_p99")" \
    "haproxy $(p99s "$ha_add" "$ha_p99")" "$(ratio "$sb_p99" "$ha_p99")" "-" "info"
  row 2 "Redis CPU us per pushed message" "$sb_redis_us" "-" "-" "<= 5 us" "$(judge "$sb_redis_us" '<=' 5)"
  row 2 "Redis memory B per pushed message" "$sb_redis_b" "$rec_note" "-" "bounded" "info"
fi

if want h2; then
  sb_l=() ng_l=()
  h2q0=$(sb_metric "$sb_port" switchboard_messages_total 'mode="poll"')
  for rnd in $(seq "$rounds"); do
    sfx=""
    [ "$rounds" = 1 ] || sfx="-$rnd"
    measure_h2 "sb-h2c$sfx" "$sb_url" "$token" "$sb_pid"
    sb_l+=("$h_rps $cpu_us")
    measure_h2 "nginx-h2c$sfx" "$ng_h2_url" "" "$proxy_pid"
    ng_l+=("$h_rps $cpu_us")
  done
  h2q1=$(sb_metric "$sb_port" switchboard_messages_total 'mode="poll"')
  [ "$h2q1" = "$h2q0" ] || problem "sb-h2c: $((h2q1 - h2q0)) messages fell back to poll during the h2c runs"
  read -r sb_h2 sb_h2_cpu < <(medians "${sb_l[@]}")
  read -r ng_h2 ng_h2_cpu < <(medians "${ng_l[@]}")
  row 3 "h2c requests/s (-c$h2_conns -m$h2_streams)" "$(fmt_int "$sb_h2")" "nginx $(fmt_int "$ng_h2")" \
    "$(ratio "$sb_h2" "$ng_h2")" ">= 1.0x nginx" "$(judge "$sb_h2" '>=' "$ng_h2")"
  row "" "  h2c CPU us per request" "$sb_h2_cpu" "nginx $ng_h2_cpu" "$(ratio "$sb_h2_cpu" "$ng_h2_cpu")" "-" "info"
fi

if want poll; then
  d0=$(redis-cli -p "$redis_port" zcard "sb:{ws-poll}:q:ready" | tr -d '\r')
  # what the earlier rows left in Redis (their records): a bigger heap costs each queued
  # message ~1.5 us more Redis CPU (bench/README.md), so the poll row says what it ran on
  poll_heap_mb=$(calc "$(redis_info "$redis_port" memory used_memory) / 1048576" 0)
  measure_wrk sb-poll "$poll_url" "$sb_pid"
  poll_rps=$w_rps
  poll_redis_us=$(calc "($r_cpu_s * 1e6 - $redis_bg_us_per_s * $r_wall_s) / $w_requests")
  poll_redis_b=$(calc "$r_mem / $w_requests" 0)
  d1=$(redis-cli -p "$redis_port" zcard "sb:{ws-poll}:q:ready" | tr -d '\r')
  # every answer is a queued message (plus at most the requests wrk left in flight, in
  # the warm-up and in the measured run)
  q_ok=$((w_warm + w_requests))
  if [ $((d1 - d0)) -lt "$q_ok" ] || [ $((d1 - d0)) -gt $((q_ok + conns * 2)) ]; then
    problem "sb-poll: $q_ok answers (warm-up included) but the queue grew by $((d1 - d0))"
  fi
  row 4 "poll requests/s vs push" "$(fmt_int "$poll_rps")" "push $(fmt_int "$sb_rps")" \
    "$(ratio "$poll_rps" "$sb_rps")" ">= 0.8x push" "$(judge "$poll_rps" '>=' "$(calc "0.8 * $sb_rps" 3)")"
  row 4 "Redis CPU us per queued message" "$poll_redis_us" "-" "-" "<= 30 us" "$(judge "$poll_redis_us" '<=' 30)"
  row "" "  Redis memory B per queued message" "$poll_redis_b" "-" "-" "-" "info"
  row "" "  Redis heap before the poll run, MB" "$poll_heap_mb" "-" "-" "-" "info"
fi

if want drain; then
  # The workspace's agent is down: every message falls back (connect_refused, then
  # circuit_open) and is queued. wrk stops after drain_n answers; qwatch times the fill.
  sb_register "$sb_port" '{"workspace_id":"ws-drain","url":"http://127.0.0.1:'"$drain_port"'/a2a","delivery_mode":"push"}'
  "$PY" "$root/bench/qwatch.py" fill "$redis_port" ws-drain "$drain_n" "$drain_timeout" >"$work/fill.out" &
  watch_pid=$!
  bench_pids+=("$watch_pid")
  (BENCH_RUN=drain BENCH_WS=ws-drain BENCH_STOP_AFTER=$drain_n exec wrk -t1 -c"$conns" \
    -d"${drain_timeout}s" -s "$root/bench/send.lua" "http://127.0.0.1:$sb_port" >"$work/fill-wrk.out" 2>&1) &
  fill_wrk=$!
  bench_pids+=("$fill_wrk")
  rc0=$(redis_cpu "$redis_port")
  wait "$watch_pid" || bench_die "drain: the queue did not fill to $drain_n in ${drain_timeout}s ($(cat "$work/fill-wrk.out"))"
  bench_stop "$fill_wrk"
  read -r f_d0 f_t0 f_d1 f_t1 f_final <"$work/fill.out"
  enq_rate=$(calc "($f_d1 - $f_d0) / ($f_t1 - $f_t0)" 0)
  # The agent comes up (with an access log, to count what reaches it) and a heartbeat
  # starts the redelivery at once; qwatch, started first, times the queue emptying.
  drained0=$(sb_metric "$sb_port" switchboard_drained_total)
  rc1=$(redis_cpu "$redis_port"); sc1=$(proc_cpu_us "$sb_pid")
  "$PY" "$root/bench/qwatch.py" drain "$redis_port" ws-drain "$drain_timeout" >"$work/drain.out" &
  watch_pid=$!
  bench_pids+=("$watch_pid")
  for _ in $(seq 200); do
    [ -s "$work/drain.out" ] && break
    sleep 0.05
  done
  [ -s "$work/drain.out" ] || bench_die "drain: qwatch.py did not start"
  agent_conf "$work/agent-drain" "$drain_port" "$work/agent-drain/access.log"
  nginx_start "$work/agent-drain"
  wait_port "$drain_port" "drain agent"
  sb_log="$work/switchboard-$sb_port.log"
  drain_lines0=$(grep -c 'pushes in flight' "$sb_log" || true)
  hb_t=$(now_s)
  hb=$(curl -sS -o "$work/hb.json" -w '%{http_code}' -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{"workspace_id":"ws-drain"}' \
    "http://127.0.0.1:$sb_port/registry/heartbeat")
  [ "$hb" = 200 ] || bench_die "heartbeat answered $hb: $(cat "$work/hb.json")"
  wait "$watch_pid" || bench_die "drain: the queue was not emptied in ${drain_timeout}s (see $work/switchboard-$sb_port.log)"
  read -r d_n d_t0 d_t1 < <(tail -1 "$work/drain.out")
  redis_settle "$redis_port"
  rc2=$(redis_cpu "$redis_port"); sc2=$(proc_cpu_us "$sb_pid")
  drained1=$(sb_metric "$sb_port" switchboard_drained_total)
  at_agent=$(wc -l <"$work/agent-drain/access.log")
  drain_rate=$(calc "$d_n / ($d_t1 - $d_t0)" 0)
  [ $((drained1 - drained0)) -ge "$d_n" ] || problem "drain: switchboard_drained_total rose by $((drained1 - drained0)), the queue held $d_n"
  [ "$at_agent" -ge "$d_n" ] || problem "drain: the agent saw $at_agent requests for $d_n queued messages"
  # the drain's own account of its pacing (drain.c's closing log line), once it has ended
  pacing="(no closing line of the drain in the log)"
  for _ in $(seq 100); do
    if [ "$(grep -c 'pushes in flight' "$sb_log" || true)" -gt "$drain_lines0" ]; then
      pacing=$(grep 'pushes in flight' "$sb_log" | tail -1 | sed -n 's/.*(\([0-9.]* ms; pushes in flight[^)]*\)).*/\1/p')
      break
    fi
    sleep 0.05
  done
  runs+=("$(printf '%-16s fill   %9d msg %10s msg/s  (wrk stopped at %d answers; queue %d)' drain-fill "$((f_d1 - f_d0))" "$enq_rate" "$drain_n" "$f_final")")
  runs+=("$(printf '%-16s drain  %9d msg %10s msg/s  began %.2f s after the heartbeat, took %.2f s; agent saw %d requests; Redis CPU %s us/msg fill, %s us/msg drain; switchboard CPU %s us/msg drain' \
    drain "$d_n" "$drain_rate" "$(calc "$d_t0 - $hb_t" 3)" "$(calc "$d_t1 - $d_t0" 3)" "$at_agent" \
    "$(calc "($rc1 - $rc0) * 1e6 / $f_final")" "$(calc "($rc2 - $rc1) * 1e6 / $d_n")" \
    "$(calc "($sc2 - $sc1) / $d_n")")")
  runs+=("$(printf '%-16s pacing %s' drain "$pacing")")
  row 5 "drain msg/s vs enqueue msg/s ($d_n msgs)" "$drain_rate" "enqueue $enq_rate" \
    "$(ratio "$drain_rate" "$enq_rate")" ">= 1.2x enqueue" "$(judge "$drain_rate" '>=' "$(calc "1.2 * $enq_rate" 3)")"
fi

# idle_rss name port pid... — RSS of the process trees before, with idle_n keep-alive
# connections that each did one message/send (answered 200) and sit idle, and after they
# closed. Sets i_ok i_base i_rss i_grow_kb.
idle_rss() {
  local name=$1 port=$2
  shift 2
  printf 'POST /workspaces/ws-push/a2a HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n' \
    "$port" "$token" "$(stat -c %s "$body")" >"$work/idle-req"
  cat "$body" >>"$work/idle-req"
  i_base=$(proc_rss_kb "$@")
  bench_bg "$PY" "$root/bench/idle.py" --port "$port" --count "$idle_n" --concurrency 32 \
    --request-file "$work/idle-req" --status-file "$work/idle-$name.status" --hold-s 200 --timeout-s 150
  local client=$bench_pid _ st
  for _ in $(seq 1800); do
    [ -s "$work/idle-$name.status" ] && break
    [ -d "/proc/$client" ] || break
    sleep 0.1
  done
  [ -s "$work/idle-$name.status" ] || bench_die "idle $name: the client did not report (exited early?)"
  st=$(cat "$work/idle-$name.status")
  i_ok=${st#* ok=}
  i_ok=${i_ok%% *}
  [ "$i_ok" = "$idle_n" ] || problem "idle $name: $st"
  [[ $st == *"statuses=200:$idle_n" ]] || problem "idle $name: not every request was answered 200 ($st)"
  sleep 0.5 # the last answers' buffers released, the connections idle
  i_rss=$(proc_rss_kb "$@")
  i_grow_kb=$((i_rss - i_base))
  if [ "$name" = switchboard ]; then
    local open
    open=$(sb_metric "$port" switchboard_connections)
    [ "$open" -ge "$i_ok" ] || problem "idle switchboard: it counts $open open connections, the client holds $i_ok"
  fi
  bench_stop "$client"
  sleep 0.5
  runs+=("$(printf '%-16s idle   %9d conns: RSS %d KB fresh, %d KB with them (+%d KB, %.2f KB each), %d KB after they closed' \
    "idle-$name" "$i_ok" "$i_base" "$i_rss" "$i_grow_kb" "$(calc "$i_grow_kb / ($i_ok > 0 ? $i_ok : 1)" 2)" \
    "$(proc_rss_kb "$@")")")
}

# On fresh processes: a front that served the loads above keeps freed heap resident,
# which new connections would reuse, hiding their cost. The base is the RSS after start,
# registration (shared through Redis) and one push.
if want idle; then
  idle_sb_port=$(free_port)
  sb_start "$idle_sb_port" "redis://127.0.0.1:$redis_port" --threads "$threads" --idle-timeout-s 300 \
    "${sb_extra[@]}"
  idle_sb_pid=$sb_pid
  m=$(delivery_mode "http://127.0.0.1:$idle_sb_port/workspaces/ws-push/a2a")
  [ "$m" = push ] || bench_die "the idle-test switchboard did not push (X-Delivery-Mode: '$m')"
  idle_rss switchboard "$idle_sb_port" "$idle_sb_pid"
  sb_idle_kb=$i_grow_kb sb_idle_ok=$i_ok
  bench_stop "$idle_sb_pid"

  idle_ng_port=$(free_port)
  proxy_conf "$work/proxy-idle" "$idle_ng_port" "$(free_port)"
  nginx_start "$work/proxy-idle"
  idle_ng_pid=$bench_pid
  wait_port "$idle_ng_port" "nginx proxy for the idle test"
  [ "$(status_of "http://127.0.0.1:$idle_ng_port/workspaces/ws-push/a2a")" = 200 ] ||
    bench_die "the idle-test nginx proxy did not answer 200"
  idle_rss nginx "$idle_ng_port" "$idle_ng_pid"
  ng_idle_kb=$i_grow_kb ng_idle_ok=$i_ok
  bench_stop "$idle_ng_pid"

  sb_mb=$(calc "$sb_idle_kb / 1024")
  ng_mb=$(calc "$ng_idle_kb / 1024")
  limit_mb=$(calc "20 * $idle_n / 10000")
  row 6 "$idle_n idle keep-alive conns: MB above base" \
    "$sb_mb ($(calc "$sb_idle_kb / ($sb_idle_ok > 0 ? $sb_idle_ok : 1)" 2) KB/conn)" \
    "nginx $ng_mb ($(calc "$ng_idle_kb / ($ng_idle_ok > 0 ? $ng_idle_ok : 1)" 2) KB/conn)" \
    "$(ratio "$sb_mb" "$ng_mb")" "<= $limit_mb MB" "$(judge "$sb_mb" '<=' "$limit_mb")"
fi

echo "runs:"
printf '  %s\n' "${runs[@]}"
echo
printf '%-2s %-45s %-22s %-26s %-6s %-16s %s\n' "#" "target of issue 11" switchboard reference ratio target mark
printf '%s\n' "${table[@]}"
met=0 missed=0
for r in "${table[@]}"; do
  case $r in
  *" met") met=$((met + 1)) ;;
  *" MISSED") missed=$((missed + 1)) ;;
  esac
done
echo
echo "$met met, $missed missed (Redis background while idle: $redis_bg_us_per_s us/s, subtracted from the Redis rows;" \
  "direct to the agent: $(fmt_int "$direct_rps") req/s)"
if [ ${#problems[@]} -gt 0 ]; then
  echo
  echo "bench: INVALID RUN — these rows are not to be trusted:" >&2
  printf '  %s\n' "${problems[@]}" >&2
  exit 1
fi
if [ "${BENCH_STRICT:-0}" = 1 ] && [ "$missed" -gt 0 ]; then exit 3; fi
exit 0
