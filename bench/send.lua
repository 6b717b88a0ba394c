-- send.lua — the one wrk script of the benchmarks (bench/run.sh, bench/queue.sh).
--
-- Every request is an A2A message/send POST of about $BENCH_BODY_BYTES bytes (default
-- 1024: the text part is padded) with a messageId of its own ("<run>-<thread>-<n>"), so
-- switchboard never sees a repeated (source, messageId) — no record replaced, no queue
-- dedup. The JSON-RPC id is the messageId too.
--
-- Environment:
--   BENCH_TOKEN        "Authorization: Bearer …" when set (switchboard needs it; nginx,
--                      HAProxy and the agent ignore it)
--   BENCH_WS           workspace id: the path is /workspaces/<ws>/a2a (without it, the
--                      path of wrk's URL); with BENCH_WS_N > 0 the requests go
--                      round-robin to <ws>-0 … <ws>-(N-1)
--   BENCH_RUN          prefix of the messageIds (default "m"); give each run its own
--   BENCH_BODY_BYTES   body size (default 1024)
--   BENCH_STOP_AFTER   > 0: each wrk thread stops after that many answers (the drain
--                      benchmark's bounded fill); wrk itself still waits for -d
--
-- done() prints one line that the shell scripts read:
--   RESULT requests=N non2xx=N errors=N duration_us=N p50_us=N p99_us=N
local token = os.getenv("BENCH_TOKEN")
local ws = os.getenv("BENCH_WS")
local ws_n = tonumber(os.getenv("BENCH_WS_N") or "0")
local run = os.getenv("BENCH_RUN") or "m"
local body_bytes = tonumber(os.getenv("BENCH_BODY_BYTES") or "1024")
local stop_after = tonumber(os.getenv("BENCH_STOP_AFTER") or "0")

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local headers = {["Content-Type"] = "application/json"}
if token ~= nil and token ~= "" then
  headers["Authorization"] = "Bearer " .. token
end

-- The body is head .. mid .. id .. tail with the id twice; the padding makes the whole
-- body body_bytes long for an id of the typical length.
local counter = 0
local head, mid, tail, pad
local function build_parts()
  local id_len = #(run .. "-" .. tostring(tid) .. "-100000")
  head = '{"jsonrpc":"2.0","id":"'
  mid = '","method":"message/send","params":{"message":{"kind":"message","role":"user",' ..
    '"messageId":"'
  local text_head = '","parts":[{"kind":"text","text":"'
  local text_tail = '"}]}}}'
  local fixed = #head + #mid + #text_head + #text_tail + 2 * id_len
  pad = string.rep("x", math.max(0, body_bytes - fixed))
  tail = text_head .. pad .. text_tail
end

function request()
  if head == nil then build_parts() end
  counter = counter + 1
  local id = run .. "-" .. tostring(tid) .. "-" .. counter
  local path = wrk.path
  if ws ~= nil and ws_n > 0 then
    path = "/workspaces/" .. ws .. "-" .. (counter % ws_n) .. "/a2a"
  elseif ws ~= nil then
    path = "/workspaces/" .. ws .. "/a2a"
  end
  return wrk.format("POST", path, headers, head .. id .. mid .. id .. tail)
end

if stop_after > 0 then
  local answers = 0
  function response(status, hdrs, body)
    answers = answers + 1
    if answers >= stop_after then wrk.thread:stop() end
  end
end

function done(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d non2xx=%d errors=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
