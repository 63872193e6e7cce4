-- Shared by every bench/lua scenario (loaded with dofile by each script; bench/run.py sets
-- BENCH_LUA_DIR and BENCH_DATA). A scenario defines request() after loading this file.
-- BENCH_DATA names a generated Lua file returning {people = {{token, card_a, card_b}, ...}}
-- (Portal scenarios) or {accounts = N} (baseline scenarios).
-- Counts statuses per thread and prints one machine-readable summary (lines "BENCH ...")
-- that bench/run.py parses; a sample body of each non-2xx status is kept.

local threads = {}
sent = 0
statuses = {}
samples = {}
data = dofile(os.getenv("BENCH_DATA"))

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

-- args[1]: a number unique to this wrk invocation (idempotency keys' prefix, random seed).
function init(args)
  local nonce = tonumber(args[1] or "1")
  math.randomseed(nonce * 64 + tid)
  prefix = string.format("bench-%s-%d-", args[1] or "1", tid)
end

-- A unique Idempotency-Key for this thread's next request.
function next_key()
  sent = sent + 1
  return prefix .. sent
end

function person()
  return data.people[math.random(#data.people)]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if (status < 200 or status > 299) and samples[status] == nil then
    samples[status] = string.gsub(string.sub(body or "", 1, 300), "\n", " ")
  end
end

function done(summary, latency, requests)
  local total, shown, in_flight = {}, {}, 0
  for _, t in ipairs(threads) do
    local answered = 0
    for status, count in pairs(t:get("statuses")) do
      total[status] = (total[status] or 0) + count
      answered = answered + count
    end
    in_flight = in_flight + t:get("sent") - answered
    for status, text in pairs(t:get("samples")) do shown[status] = text end
  end
  local e = summary.errors
  io.write(string.format("BENCH summary %d %d %d %d %d %d %d %d\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout, in_flight))
  for _, p in ipairs({50, 95, 99}) do
    io.write(string.format("BENCH latency %g %d\n", p, latency:percentile(p)))
  end
  for status, count in pairs(total) do
    io.write(string.format("BENCH status %d %d\n", status, count))
  end
  for status, text in pairs(shown) do
    io.write(string.format("BENCH sample %d %s\n", status, text))
  end
end
