-- post.lua — wrk script for the push-path benchmark (bench/run.sh).
--
-- Every request is one A2A message/send POST with the body in $BENCH_BODY_FILE and,
-- when $BENCH_TOKEN is set, "Authorization: Bearer $BENCH_TOKEN" (switchboard needs it;
-- the nginx proxy ignores it). Non-2xx answers are counted by wrk itself.
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
