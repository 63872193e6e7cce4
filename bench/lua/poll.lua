-- The dashboard's live-update poll as htmx sends it (GET /wallet/changes?v=<version>, HX-Request)
-- for a random signed-in cardholder whose money does not move: the answer should be 204.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  local s = data.sessions[math.random(#data.sessions)]
  sent = sent + 1
  return wrk.format("GET", string.format("/wallet/changes?v=%d&view=dashboard", s[2]),
    {["Cookie"] = s[1], ["HX-Request"] = "true"})
end
