-- GET one of data.paths (a feed page: the first, or a deep one by cursor) with data.token, the
-- heavy cardholder's bearer token.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  sent = sent + 1
  return wrk.format("GET", data.paths[math.random(#data.paths)],
    {["Authorization"] = "Bearer " .. data.token})
end
