-- wrk script for bench/queue.sh: POST message/send to $BENCH_WS_N poll-mode workspaces
-- (qb-0 … qb-N-1) in turn, every message with a new messageId, so every request is one
-- fallback append. done() prints one RESULT line that queue.sh reads.
local token = os.getenv("BENCH_TOKEN")
local ws_n = tonumber(os.getenv("BENCH_WS_N") or "32")
local threads, counter = 0, 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function request()
  counter = counter + 1
  local mid = "m-" .. tid .. "-" .. counter
  local body = '{"jsonrpc":"2.0","id":"' .. mid .. '","method":"message/send","params":' ..
    '{"message":{"kind":"message","role":"user","messageId":"' .. mid .. '",' ..
    '"parts":[{"kind":"text","text":"queued by the bench"}]}}}'
  return wrk.format("POST", "/workspaces/qb-" .. (counter % ws_n) .. "/a2a",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d non2xx=%d errors=%d duration_us=%d p99_us=%d\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(99)))
end
