-- wrk script for bench/pg_vs_sqlite.sh: RFC 7662 introspection requests that cycle through
-- many distinct tokens (one per line in BENCH_TOKENS_FILE), so no two concurrent requests
-- need to ask about the same token. Env: BENCH_TOKENS_FILE, BENCH_AUTH (Authorization value).
-- Prints the same RESULT line as bench/introspect.lua.
local auth = os.getenv("BENCH_AUTH") or ""
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS_FILE")) do
  if line ~= "" then tokens[#tokens + 1] = line end
end
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded",
                  ["Accept"] = "application/json" }
if auth ~= "" then headers["Authorization"] = auth end
local i = 0

function init(args)
  i = math.random(#tokens)  -- threads start at different tokens
end

function request()
  i = i % #tokens + 1
  return wrk.format("POST", nil, headers, "token=" .. tokens[i] .. "&token_type_hint=access_token")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.2f rps=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f"
      .. " connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.connect, e.read, e.write, e.status, e.timeout))
end
