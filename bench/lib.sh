# shellcheck shell=bash
# bench/lib.sh — set-up shared by the benchmark scripts (sourced by run.sh and queue.sh).
#
# A script does `source bench/lib.sh` then `bench_init NAME`: that moves to the
# repository root, makes a temp dir ($work), and installs an EXIT trap that stops every
# process started through bench_bg (by PID, children of an nginx master included, never
# by name) and removes $work. Everything listens on 127.0.0.1 on ports picked free at
# run time. The helpers never sleep a fixed time to wait for something: they poll with
# a deadline and fail loudly (bench_die: message on stderr, exit 1) when it passes.
# bench_init also sets $root, $token (switchboard's admin token for sb_start), $sb_bin
# (bin/switchboard, or $BENCH_SB_BIN) and $PY.
#
# Measuring helpers: CPU time of a process tree from /proc/PID/stat (utime+stime), the
# machine's busy share from /proc/stat, RSS
# from /proc/PID/status (VmRSS), Redis CPU and memory from INFO, switchboard counters
# from /metrics, and wrk runs with bench/send.lua (RESULT line → shell variables).

bench_die() {
  echo "bench: $*" >&2
  exit 1
}

bench_need() { # tool... — every tool on PATH, else die naming it
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || bench_die "$t is missing (make bench installs it)"
  done
}

bench_init() { # name — cd to the repo root, temp dir in $work, cleanup trap
  cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
  root=$PWD
  sb_bin=${BENCH_SB_BIN:-bin/switchboard} # another build to compare: BENCH_SB_BIN=/path
  [ -x "$sb_bin" ] || bench_die "$sb_bin is missing (run make)"
  work=$(mktemp -d "/tmp/sb-$1.XXXXXX")
  bench_pids=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  token="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" # the admin token
  export BENCH_TOKEN=$token # bench/send.lua sends it
  CLK_TCK=$(getconf CLK_TCK)
  PY=/usr/bin/python3
  [ -x "$PY" ] || PY=python3
  user_line="" # nginx as root needs to be told to stay root (its configs put this first)
  [ "$(id -u)" = 0 ] && user_line="user root root;"
  return 0
}

# Every PID of the tree under $1 (the process itself first).
bench_tree() {
  local p=$1 c
  echo "$p"
  # shellcheck disable=SC2013 # the children files are PIDs separated by spaces
  for c in $(cat "/proc/$p/task/"*/children 2>/dev/null); do bench_tree "$c"; done
}

bench_cleanup() {
  local p all=()
  for p in "${bench_pids[@]}"; do
    [ -d "/proc/$p" ] && mapfile -t -O "${#all[@]}" all < <(bench_tree "$p")
  done
  for p in "${all[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${bench_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # whatever ignored SIGTERM (nothing should) goes now
  for p in "${all[@]}"; do [ -d "/proc/$p" ] && kill -9 "$p" 2>/dev/null; done
  rm -rf "$work"
}

# Run "$@" in the background, remember its PID for the cleanup; the PID is in $bench_pid.
bench_bg() {
  "$@" &
  bench_pid=$!
  bench_pids+=("$bench_pid")
}

# Stop one process started by bench_bg (its tree), and wait for it.
bench_stop() {
  local p tree
  tree=$(bench_tree "$1" 2>/dev/null || true)
  for p in $tree; do kill "$p" 2>/dev/null || true; done
  wait "$1" 2>/dev/null || true
}

# Arithmetic on decimals: calc EXPR [DECIMALS (1)] prints EXPR (awk syntax) rounded.
calc() { awk "BEGIN { v = $1; printf \"%.${2:-1}f\n\", v }"; }

# A free loopback port whose +10000 (a Redis Cluster bus port) is free and valid too.
free_port() {
  "$PY" - <<'PY'
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

wait_port() { # port [what]
  local _
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  bench_die "nothing listens on port $1${2:+ ($2)}"
}

wait_pong() {
  local _
  for _ in $(seq 200); do
    [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  bench_die "redis-server :$1 does not answer"
}

redis_start() { # port dir extra-args...
  local port=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  bench_bg redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" --daemonize no --logfile "$dir/log" "$@"
  wait_pong "$port"
}

# One numeric field of INFO SECTION: redis_info port section field
redis_info() {
  redis-cli -p "$1" info "$2" | tr -d '\r' | awk -F: -v f="$3" '$1 == f {print $2}'
}

# CPU seconds (user + sys, µs resolution) used so far by the redis-servers on the ports.
redis_cpu() {
  local p
  for p in "$@"; do redis-cli -p "$p" info cpu; done | tr -d '\r' |
    awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f\n", s}'
}

# Wait until Redis has processed no command for 200 ms (the notes switchboard sends after
# its answers have landed), at most 5 s.
redis_settle() {
  local a b _
  a=$(redis_info "$1" stats total_commands_processed)
  for _ in $(seq 25); do
    sleep 0.2
    b=$(redis_info "$1" stats total_commands_processed)
    [ "$a" = "$b" ] && return 0
    a=$b
  done
}

# CPU time in µs (utime + stime from /proc/PID/stat, all threads) of every process of the
# trees under the PIDs.
proc_cpu_us() {
  local p all=()
  for p in "$@"; do mapfile -t -O "${#all[@]}" all < <(bench_tree "$p"); done
  for p in "${all[@]}"; do cat "/proc/$p/stat" 2>/dev/null; done |
    sed 's/^.*) //' | awk -v hz="$CLK_TCK" '{t += $12 + $13} END {printf "%.0f\n", t * 1e6 / hz}'
}

# The machine's CPU ticks so far, all cores: "busy total" (busy = user, nice, system,
# irq, softirq; total adds idle and iowait) from the first line of /proc/stat.
machine_ticks() {
  awk '$1 == "cpu" {b = $2 + $3 + $4 + $7 + $8; print b, b + $5 + $6; exit}' /proc/stat
}

# busy_pct "busy0 total0" "busy1 total1" → the busy share between the two, percent: a
# load that keeps it near 100 is bound by the cores; one well below waits on something
# else (a single-threaded stage, round trips).
busy_pct() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
    t = y[2] - x[2]; printf "%.0f\n", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }'
}

# VmRSS in KB summed over the trees under the PIDs.
proc_rss_kb() {
  local p all=()
  for p in "$@"; do mapfile -t -O "${#all[@]}" all < <(bench_tree "$p"); done
  for p in "${all[@]}"; do cat "/proc/$p/status" 2>/dev/null; done |
    awk '$1 == "VmRSS:" {s += $2} END {print s + 0}'
}

# switchboard: start one, wait for /readyz 200. sb_start port redis-url extra-args...
# The PID is in $sb_pid, the log in $work/switchboard-PORT.log.
sb_start() {
  local port=$1 url=$2 _
  shift 2
  bench_bg "$sb_bin" --listen "127.0.0.1:$port" --redis "$url" --admin-token "$token" \
    --allow-upstream 127.0.0.0/8 "$@" >"$work/switchboard-$port.log" 2>&1
  sb_pid=$bench_pid
  for _ in $(seq 200); do
    curl -fs -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && return 0
    [ -d "/proc/$sb_pid" ] || break
    sleep 0.05
  done
  tail -5 "$work/switchboard-$port.log" >&2
  bench_die "switchboard on :$port is not ready"
}

# POST /registry/register with the admin token; dies unless 200. sb_register port json
sb_register() {
  local code
  code=$(curl -sS -o "$work/register.json" -w '%{http_code}' -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d "$2" "http://127.0.0.1:$1/registry/register")
  [ "$code" = 200 ] || bench_die "register $2 answered $code: $(cat "$work/register.json")"
}

# Sum of a switchboard counter's samples whose labels contain $3 (e.g. mode="push").
# sb_metric port name [label-filter]
sb_metric() {
  curl -fsS "http://127.0.0.1:$1/metrics" |
    awk -v n="$2" -v f="${3:-}" 'index($0, n) == 1 && (f == "" || index($0, f)) &&
      (substr($0, length(n) + 1, 1) == "{" || substr($0, length(n) + 1, 1) == " ") {s += $NF}
      END {printf "%.0f\n", s}'
}

# wrk with bench/send.lua; the environment knobs of send.lua pass through. Sets
# w_requests w_non2xx w_errors w_duration_us w_p50_us w_p99_us w_rps (answers per second).
# bench_wrk url connections duration-s [threads]
# shellcheck disable=SC2034 # the w_* are the callers' results
bench_wrk() {
  local out
  out=$(wrk -t"${4:-1}" -c"$2" -d"$3s" -s "$root/bench/send.lua" "$1" 2>&1 | grep '^RESULT' || true)
  [ -n "$out" ] || bench_die "wrk against $1 printed no RESULT line"
  w_requests=0 w_non2xx=0 w_errors=0 w_duration_us=0 w_p50_us=0 w_p99_us=0
  local kv
  for kv in ${out#RESULT }; do printf -v "w_${kv%%=*}" '%s' "${kv#*=}"; done
  w_rps=$(awk -v r="$w_requests" -v d="$w_duration_us" 'BEGIN {printf "%.1f\n", (d > 0 ? r * 1e6 / d : 0)}')
}

# ---- the agent: nginx answering a JSON-RPC result; agent_conf dir port [access-log] ----
# $agent_workers (default 1) worker processes.
reply='{"jsonrpc":"2.0","id":"bench-1","result":{"kind":"message","role":"agent","messageId":"bench-reply","parts":[{"kind":"text","text":"ok"}]}}'
agent_conf() {
  local dir=$1 port=$2 log=${3:-off}
  mkdir -p "$dir"
  local card='{"name":"bench agent","url":"http://127.0.0.1:'"$port"'/a2a","version":"1.0"}'
  cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes ${agent_workers:-1};
worker_rlimit_nofile 4096;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log $log;
  client_body_temp_path $dir/body;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port reuseport;
    default_type application/json;
    client_body_buffer_size 64k;
    location = /.well-known/agent-card.json { return 200 '$card'; }
    location / { return 200 '$reply'; }
  }
}
EOF
}
nginx_start() { # dir — in the foreground (the PID is the master's), into $bench_pid
  bench_bg nginx -p "$1" -e "$1/error.log" -c "$1/nginx.conf" -g 'daemon off;' 2>>"$1/stderr"
}
