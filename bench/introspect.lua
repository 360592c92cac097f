-- wrk script for bench/introspect.sh: POST an RFC 7662 introspection request.
-- Env: BENCH_TOKEN (token value), BENCH_AUTH (whole Authorization header value, may be empty).
-- Prints one RESULT line from wrk's own latency histogram (microseconds -> ms).
local token = os.getenv("BENCH_TOKEN") or "unknown-token"
local auth = os.getenv("BENCH_AUTH") or ""

wrk.method = "POST"
wrk.body = "token=" .. token .. "&token_type_hint=access_token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Accept"] = "application/json"
if auth ~= "" then wrk.headers["Authorization"] = auth end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.2f rps=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f"
      .. " connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.connect, e.read, e.write, e.status, e.timeout))
end
