-- wrk script: send pre-rendered HTTP requests from a file, each once, in order.
--
--   wrk -t T -c C -d D -s bench/lua/replay.lua URL -- RECORDS_FILE T
--
-- RECORDS_FILE holds raw HTTP/1.1 requests (request line, headers with Host and
-- Content-Length, body), each preceded by its length in bytes and a newline:
--   "<length>\n<raw request>" ...
-- written by bench/_load.py (write_records). Thread k of T sends records k, k+T, k+2T, ...
-- so no record is sent twice while there are enough of them; when a thread runs out it
-- starts over and the summary says so ("wrapped"), because the bridge would then see
-- redeliveries (acknowledged, not stored again) instead of new events.
--
-- done() prints one line "BENCH_JSON {...}" that bench/_load.py parses: completed
-- requests, duration, socket errors, non-2xx/3xx answers, latency percentiles (µs) and
-- how many requests the threads issued.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local records = {}
local issued = 0
sent = 0     -- globals: read by done() through thread:get
wrapped = 0

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  local nthreads = tonumber(args[2] or "1")
  local first = id + 1
  local pos, index = 1, 0
  while pos <= #data do
    local nl = data:find("\n", pos, true)
    local len = tonumber(data:sub(pos, nl - 1))
    index = index + 1
    if (index - first) % nthreads == 0 and index >= first then
      records[#records + 1] = data:sub(nl + 1, nl + len)
    end
    pos = nl + len + 1
  end
  assert(#records > 0, "no records for thread " .. id)
end

function request()
  issued = issued + 1
  sent = issued
  local i = (issued - 1) % #records + 1
  if issued > #records then
    wrapped = 1
  end
  return records[i]
end

function done(summary, latency, requests)
  local sent, wrapped = 0, 0
  for _, thread in ipairs(threads) do
    sent = sent + (thread:get("sent") or 0)
    wrapped = math.max(wrapped, thread:get("wrapped") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "non_2xx_3xx": %d, "latency_us": {"mean": %.1f, "p50": %d, ' ..
    '"p90": %d, "p99": %d, "max": %d}, "issued": %d, "wrapped": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    sent, wrapped))
end
