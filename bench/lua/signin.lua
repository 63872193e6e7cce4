-- POST /api/v1/auth/token (sign-in with email and password: one argon2id check) as a random
-- one of data.logins = {{email, password}, ...}.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  local l = data.logins[math.random(#data.logins)]
  sent = sent + 1
  return wrk.format("POST", "/api/v1/auth/token", {["Content-Type"] = "application/json"},
    string.format('{"email":"%s","password":"%s"}', l[1], l[2]))
end
