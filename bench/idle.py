#!/usr/bin/env python3
"""bench/idle.py — open many keep-alive connections, one request each, then sit idle.

Used by bench/run.sh for the idle-connection memory row: it opens --count connections to
127.0.0.1:--port, at most --concurrency at a time, sends the raw HTTP/1.1 request in
--request-file on each (or nothing with --connect-only), reads the whole answer
(Content-Length or chunked) and keeps the connection open. When every connection is
either idle or failed it writes "ready ok=N failed=M statuses=..." to --status-file and
then holds the connections until SIGTERM (or --hold-s passes), closes them and exits.

The soft RLIMIT_NOFILE is raised to the hard limit first; fewer descriptors than
--count + 16 is an error (exit 2), not a silently smaller test.
"""
import argparse
import asyncio
import collections
import os
import resource
import signal
import sys


async def read_answer(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--request-file")
    ap.add_argument("--connect-only", action="store_true")
    ap.add_argument("--status-file", required=True)
    ap.add_argument("--hold-s", type=float, default=120)
    ap.add_argument("--timeout-s", type=float, default=60)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < a.count + 16:
        print(f"idle.py: RLIMIT_NOFILE hard limit {hard} < {a.count + 16}", file=sys.stderr)
        sys.exit(2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    request = b""
    if not a.connect_only:
        with open(a.request_file, "rb") as f:
            request = f.read()

    held, statuses, failed = [], collections.Counter(), [0]
    sem = asyncio.Semaphore(a.concurrency)

    async def one():
        async with sem:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
                if request:
                    writer.write(request)
                    statuses[await read_answer(reader)] += 1
                held.append(writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, IndexError) as e:
                failed[0] += 1
                statuses[type(e).__name__] += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(a.count))), a.timeout_s)
    except asyncio.TimeoutError:
        pass
    with open(a.status_file + ".tmp", "w") as f:
        st = ",".join(f"{k}:{v}" for k, v in sorted(statuses.items(), key=str))
        f.write(f"ready ok={len(held)} failed={a.count - len(held)} statuses={st}\n")
    os.replace(a.status_file + ".tmp", a.status_file)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), a.hold_s)
    except asyncio.TimeoutError:
        pass
    for w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
