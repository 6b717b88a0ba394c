#!/usr/bin/env bash
# `make run`: switchboard for local use, in the foreground (Ctrl-C stops it).
#
#   tools/run-local.sh [REDIS_URL] [LISTEN]
#
# Redis. Without REDIS_URL, make run uses a redis-server of its own: 127.0.0.1:$RUN_REDIS_PORT
# (default 6380, not 6379, so it never mixes with a system Redis that Debian's
# redis-server package may have started), data in $SB_RUN_DIR/redis, configured as
# switchboard's queues need — AOF on (appendfsync everysec) and maxmemory-policy
# noeviction — so queued messages survive a restart. It is started if it is not running
# and stopped when switchboard stops; one already started by an earlier make run is
# reused. Anything else answering on that port is refused, never adopted. With REDIS_URL,
# that Redis is used as it is (its settings are shown, and a warning given when they can
# lose messages) and left alone. Either way the script says which Redis it uses.
#
# Admin token. Kept in $SB_RUN_DIR/admin-token (mode 0600), created on the first run and
# reused by every later one, so an exported SWITCHBOARD_ADMIN_TOKEN keeps working across
# restarts; printed every time. Delete the file for a new one.
#
# Environment: SB_RUN_DIR (default ./run), RUN_REDIS_PORT (default 6380), SB_BIN (the
# directory holding switchboard, default ./bin).
set -euo pipefail
cd "$(dirname "$0")/.."
redis_url=${1:-}
listen=${2:-127.0.0.1:8080}
run_dir=${SB_RUN_DIR:-run}
port=${RUN_REDIS_PORT:-6380}
sb_bin=${SB_BIN:-bin}/switchboard
mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)

say() { printf 'make run: %s\n' "$*"; }

# ---- Redis -------------------------------------------------------------------------
started_redis=""
redis_pid_file="$run_dir/redis/redis.pid"

# "<appendonly> <maxmemory-policy>" of the Redis at $1, or nothing when it does not answer.
redis_settings() {
  local aof policy
  aof=$(redis-cli -u "$1" --raw config get appendonly 2>/dev/null | sed -n 2p) || true
  policy=$(redis-cli -u "$1" --raw config get maxmemory-policy 2>/dev/null | sed -n 2p) || true
  [ -n "$aof" ] && echo "$aof $policy"
}

if [ -n "$redis_url" ]; then
  settings=$(redis_settings "$redis_url" || true)
  if [ -z "$settings" ]; then
    say "Redis: $redis_url (given by REDIS_URL) does not answer; switchboard needs it at start. Start it, or leave REDIS_URL empty for make run's own."
    exit 1
  else
    read -r aof policy <<<"$settings"
    say "Redis: $redis_url (given by REDIS_URL; not started or changed by make run): appendonly=$aof maxmemory-policy=$policy"
    if [ "$aof" != yes ] || [ "$policy" != noeviction ]; then
      say "warning: queued messages can be lost on this Redis: switchboard's queues want appendonly yes and maxmemory-policy noeviction"
    fi
  fi
else
  redis_url="redis://127.0.0.1:$port"
  ours=""
  if [ -f "$redis_pid_file" ] && kill -0 "$(cat "$redis_pid_file")" 2>/dev/null &&
     [ "$(readlink "/proc/$(cat "$redis_pid_file")/cwd" 2>/dev/null)" = "$run_dir/redis" ]; then
    ours=$(cat "$redis_pid_file")
  fi
  if redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
    if [ -z "$ours" ]; then
      say "127.0.0.1:$port answers, but not with the redis-server make run keeps in $run_dir/redis."
      say "Refusing to adopt it: set RUN_REDIS_PORT to a free port, or REDIS_URL=$redis_url to use that Redis on purpose."
      exit 1
    fi
    say "Redis: $redis_url — make run's own redis-server (pid $ours, data in $run_dir/redis), already running: reused"
  else
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      say "127.0.0.1:$port is taken by something that is not Redis; set RUN_REDIS_PORT to a free port"
      exit 1
    fi
    mkdir -p "$run_dir/redis"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$run_dir/redis" --daemonize yes \
      --pidfile "$redis_pid_file" --logfile "$run_dir/redis/redis.log" \
      --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
      --save "" --protected-mode yes >/dev/null
    for _ in $(seq 100); do redis-cli -u "$redis_url" ping >/dev/null 2>&1 && break; sleep 0.1; done
    if ! redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
      say "redis-server did not start; its log: $run_dir/redis/redis.log"
      exit 1
    fi
    started_redis=$(cat "$redis_pid_file")
    say "Redis: $redis_url — make run's own redis-server (pid $started_redis), started: appendonly yes, maxmemory-policy noeviction, data in $run_dir/redis"
  fi
fi
stop_redis() {
  if [ -n "$started_redis" ]; then
    kill "$started_redis" 2>/dev/null || true # SIGTERM: Redis flushes its AOF and exits
    for _ in $(seq 50); do kill -0 "$started_redis" 2>/dev/null || break; sleep 0.1; done
    started_redis=""
  fi
}
trap stop_redis EXIT

# ---- the admin token ---------------------------------------------------------------
token_file="$run_dir/admin-token"
if [ -s "$token_file" ]; then
  chmod 600 "$token_file"
  say "admin token: reused from $token_file"
else
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file")
  say "admin token: new, kept in $token_file (mode 600) for the next runs"
fi
echo
echo "  export SWITCHBOARD_ADMIN_TOKEN=$(cat "$token_file")"
echo "  export SWITCHBOARD_URL=http://$listen"
echo
say "switchboard on http://$listen, Redis $redis_url — Ctrl-C stops it"

# ---- switchboard -------------------------------------------------------------------
"$sb_bin" --listen "$listen" --redis "$redis_url" \
  --admin-token-file "$token_file" --allow-upstream 127.0.0.0/8 &
sb=$!
interrupted=0
trap 'interrupted=1; kill -TERM $sb 2>/dev/null || true' INT TERM
set +e
wait $sb
code=$?
# A signal interrupts `wait` (status 128+n) whether or not switchboard has exited yet:
# wait again for switchboard's own exit status (bash keeps it once the child is gone).
if [ "$interrupted" = 1 ]; then
  wait $sb
  code=$?
fi
set -e
stop_redis
exit $code
