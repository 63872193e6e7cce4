-- Baseline (c): GET /balance/<id> of bench/baseline_app.py (one balance row, one Redis key).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  sent = sent + 1
  return wrk.format("GET", "/balance/" .. math.random(data.accounts))
end
