-- wrk script for bench/load_serve.py --client wrk: POST one prebuilt multipart body
-- (OSR_WRK_BODY, a file) to /v1/classify and print wrk's own counts and latency percentiles
-- as one JSON line, so the Python side never sits in the request path.
local f = assert(io.open(os.getenv("OSR_WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. os.getenv("OSR_WRK_BOUNDARY")
if os.getenv("OSR_API_KEY") then wrk.headers["X-API-Key"] = os.getenv("OSR_API_KEY") end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nOSR_WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
