-- GET /api/v1/activity (the first page) of a random cardholder, with their bearer token.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  local p = person()
  sent = sent + 1
  return wrk.format("GET", "/api/v1/activity", {["Authorization"] = "Bearer " .. p[1]})
end
