-- GET /api/v1/cards/<id>/balance of a random cardholder's first card, with their bearer token.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  local p = person()
  sent = sent + 1
  return wrk.format("GET", "/api/v1/cards/" .. p[2] .. "/balance",
    {["Authorization"] = "Bearer " .. p[1]})
end
