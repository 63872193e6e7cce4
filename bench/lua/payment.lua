-- POST /api/v1/payments: a random prepared card's number, expiry and security code paid to a
-- random bench merchant (its secret key as bearer), 50-500 cents (USD's minimum is 0.50),
-- capture_method left to its default, automatic: a 201 with status succeeded.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  local c = data.cards[math.random(#data.cards)]
  local body = string.format(
    '{"amount":%d,"currency":"usd","card":{"number":"%s","exp_month":%d,"exp_year":%d,'
    .. '"cvc":"%s"}}', math.random(50, 500), c[1], c[2], c[3], c[4])
  return wrk.format("POST", "/api/v1/payments", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. data.secrets[math.random(#data.secrets)],
    ["Idempotency-Key"] = next_key(),
  }, body)
end
