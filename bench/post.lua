-- wrk script for bench/run.py: POST one framed Avro call, and report the results as JSON.
--
-- Usage: wrk ... URL -- BODY_FILE
-- BODY_FILE holds the framed request body (binary). wrk sets Content-Length from it.

wrk.method = "POST"
wrk.headers["Content-Type"] = "avro/binary"

-- init runs in each thread's own Lua state, before that thread builds its request, so the
-- body read here is what every request of the thread carries.
function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
end

-- done runs once, at the end. One line of JSON, marked so that run.py can find it among
-- wrk's own text output; latencies are in microseconds.
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
