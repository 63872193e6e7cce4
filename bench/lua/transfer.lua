-- POST /api/v1/transfers between a random cardholder's own two cards (no recipient look-up
-- needed), 1-500 cents, with the owner's bearer token and a unique Idempotency-Key.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  local p = person()
  local from, to = p[2], p[3]
  if math.random(2) == 2 then from, to = to, from end
  local body = string.format('{"from_card":"%s","to_card":"%s","amount":%d,"currency":"usd"}',
    from, to, math.random(1, 500))
  return wrk.format("POST", "/api/v1/transfers", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. p[1],
    ["Idempotency-Key"] = next_key(),
  }, body)
end
