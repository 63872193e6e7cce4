-- Baseline (b): POST /transfer to bench/baseline_app.py between two random distinct accounts,
-- 1-500 cents (the same generator and amounts as transfer.lua, no token, no idempotency).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  local n = data.accounts
  local a = math.random(n)
  local b = math.random(n - 1)
  if b >= a then b = b + 1 end
  sent = sent + 1
  return wrk.format("POST", "/transfer", {["Content-Type"] = "application/json"},
    string.format('{"from":%d,"to":%d,"amount":%d}', a, b, math.random(1, 500)))
end
