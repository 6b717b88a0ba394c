#!/usr/bin/env bash
# `make run`: start switchboard for local use.
#   1. If no Redis answers at $1 (default redis://127.0.0.1:6379), start a
#      redis-server for it with its data under ./run/redis (stopped when
#      switchboard stops).
#   2. Generate an admin token, keep it in ./run/admin-token (mode 600) and print it.
#   3. Run bin/switchboard in the foreground on $2 (default 127.0.0.1:8080), with
#      --allow-upstream 127.0.0.0/8 so agents on this machine can be registered.
set -euo pipefail
cd "$(dirname "$0")/.."
redis_url=${1:-redis://127.0.0.1:6379}
listen=${2:-127.0.0.1:8080}
mkdir -p run/redis

hostport=${redis_url#redis://}; hostport=${hostport%%/*}; hostport=${hostport##*@}
rhost=${hostport%%:*}; rport=${hostport##*:}; [ "$rport" = "$hostport" ] && rport=6379
started_redis=""
if ! redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
  echo "no Redis at $redis_url: starting redis-server on $rhost:$rport (data in run/redis)"
  redis-server --bind "$rhost" --port "$rport" --dir "$PWD/run/redis" --daemonize yes \
    --pidfile "$PWD/run/redis/redis.pid" --logfile "$PWD/run/redis/redis.log" >/dev/null
  for _ in $(seq 50); do redis-cli -u "$redis_url" ping >/dev/null 2>&1 && break; sleep 0.1; done
  started_redis=$(cat run/redis/redis.pid)
fi
stop_redis() { [ -n "$started_redis" ] && kill "$started_redis" 2>/dev/null || true; }
trap stop_redis EXIT

umask 077
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > run/admin-token
echo
echo "switchboard admin token (shown once, also in run/admin-token):"
echo "  export SWITCHBOARD_ADMIN_TOKEN=$(cat run/admin-token)"
echo "listening on http://$listen — Ctrl-C stops it"
echo
bin/switchboard --listen "$listen" --redis "$redis_url" \
  --admin-token-file run/admin-token --allow-upstream 127.0.0.0/8 &
sb=$!
trap 'kill -TERM $sb 2>/dev/null; wait $sb; stop_redis' INT TERM
wait $sb
