#!/usr/bin/env python3
"""bench/qwatch.py — time a workspace's poll queue filling up or draining, from Redis.

The queue depth is ZCARD sb:{ws}:q:ready + ZCARD sb:{ws}:q:leased (proto/redis-schema.md),
read every --interval-s over one connection (plain RESP, no client library).

  qwatch.py fill  PORT WS N TIMEOUT_S   waits until the depth reaches N, then until it has
      not changed for 0.3 s; prints "first_depth first_t reach_depth reach_t final_depth"
      (times in seconds since the watch began; the fill rate is
      (reach_depth - first_depth) / (reach_t - first_t)). Exit 1 on timeout, or when the
      depth stays the same for 5 s before reaching N (nothing is being queued).
  qwatch.py drain PORT WS TIMEOUT_S     prints "watching DEPTH" once it has read the depth
      the first time, then waits until the depth is 0 and prints
      "start_depth start_t zero_t" where start_t is the last moment the depth was still
      start_depth (the drain began right after) and zero_t the first moment it was 0, both
      as Unix times (to compare with the moment the caller sent its heartbeat). Exit 1
      on timeout.
"""
import socket
import sys
import time


class Redis:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def depth(self, ws):
        cmds = b""
        for key in (f"sb:{{{ws}}}:q:ready", f"sb:{{{ws}}}:q:leased"):
            k = key.encode()
            cmds += b"*2\r\n$5\r\nZCARD\r\n$%d\r\n%s\r\n" % (len(k), k)
        self.s.sendall(cmds)
        total = 0
        for _ in range(2):
            line = self.f.readline()
            if not line.startswith(b":"):
                raise RuntimeError(f"redis: {line!r}")
            total += int(line[1:])
        return total


def main():
    mode, port, ws = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    interval = 0.01
    r = Redis(port)
    t0 = time.monotonic()
    now = lambda: time.monotonic() - t0  # noqa: E731
    if mode == "fill":
        n, deadline = int(sys.argv[4]), float(sys.argv[5])
        first = reach = None
        last_d, last_change = -1, 0.0
        while now() < deadline:
            d = r.depth(ws)
            t = now()
            if first is None and d > 0:
                first = (d, t)
            if reach is None and d >= n:
                reach = (d, t)
            if d != last_d:
                last_d, last_change = d, t
            elif reach is not None and t - last_change >= 0.3:
                print(f"{first[0]} {first[1]:.4f} {reach[0]} {reach[1]:.4f} {d}")
                return 0
            elif t - last_change >= 5:
                print(f"qwatch: the queue of {ws} stays at {d} (of {n}) for 5 s",
                      file=sys.stderr)
                return 1
            time.sleep(interval)
        print(f"qwatch: the queue of {ws} reached {last_d}, not {n}, in {deadline} s",
              file=sys.stderr)
        return 1
    if mode == "drain":
        deadline = float(sys.argv[4])
        start_d = r.depth(ws)
        start_t = time.time()
        print(f"watching {start_d}", flush=True)
        while now() < deadline:
            d = r.depth(ws)
            t = time.time()
            if d >= start_d:
                start_d, start_t = d, t
            if d == 0:
                print(f"{start_d} {start_t:.4f} {t:.4f}")
                return 0
            time.sleep(interval)
        print(f"qwatch: the queue of {ws} still holds {d} of {start_d} after {deadline} s",
              file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
