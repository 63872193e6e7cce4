-- GET /wallet (the cardholder dashboard, full HTML) as a random signed-in cardholder:
-- data.sessions = {{cookie header, live-update version}, ...}.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  local s = data.sessions[math.random(#data.sessions)]
  sent = sent + 1
  return wrk.format("GET", "/wallet", {["Cookie"] = s[1]})
end
