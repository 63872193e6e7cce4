"""The standing security suite (issue 11 C): the attacks that held, kept tested, and a secrets scan.

Run it alone with ``pytest tests/security`` (real PostgreSQL and Redis, about half a minute).
Each attack is tested once; where another module already proves it, it is named here instead
of repeated.

Who may call what
  test_authorization_matrix.py        every route x six personas against an access table; a
                                      new route fails until the table says who may use it

JWT access tokens
  test_jwt_attacks.py                 over HTTP: alg none (each spelling), HS384/HS512 under our
                                      key, RS256/ES256 confusion, embedded jwk (RSA, EC, oct),
                                      jku/x5u, kid injection, unknown/malformed crit, b64=false,
                                      wrong iss/aud/typ, header typ, expired, future iat/nbf,
                                      tampered sub, refresh token as access and access as refresh
  tests/services/test_tokens.py       the verifier claim by claim (missing and malformed claims,
                                      wrong key, leeway), refresh rotation, reuse detection and
                                      the grace period
  tests/api/test_auth_api.py          refresh reuse revokes the family over HTTP; TOTP replay and
                                      recovery codes at sign-in; sign-in throttles

CSRF
  test_csrf_every_page_route.py       generated from the URL map: every state-changing page route
                                      without a token, as htmx, and with another session's token
                                      in the form and the header: a 400 that writes nothing;
                                      a new route is covered automatically (CSRF_EXEMPT is empty)
  tests/pages/test_logout.py          the refusal's page and a fresh token to retry with
  tests/api/test_conventions.py       the JSON API (bearer credentials only) is exempt

Headers, cookies, redirects
  test_headers_cookies_redirects.py   headers on every GET route, page and htmx, and on every kind
                                      of response (errors, 500s, static, JSON, TLS/HSTS); cookie
                                      flags over HTTP and TLS; no page route redirects off site
  tests/web/test_security_headers.py  the exact CSP; HSTS value; request ids; trusted proxies
  tests/pages/test_login.py           a new session cookie at each sign-in; sign-in's next
  tests/sso/test_flow.py              single sign-on's next; PKCE, state and nonce
  tests/merchants/test_checkout_pages.py   checkout returns only to the session's own URLs

Object ownership and idempotency
  test_object_ownership.py            generated from the URL map: every owner-only route with an
                                      object in its path, as another cardholder, another
                                      merchant's owner or its key, with A's objects and with A's
                                      object inside B's own merchant/user/endpoint: 404, no row
                                      changed; objects named in bodies and filters; one
                                      Idempotency-Key from two callers makes two objects
  tests/services/test_public_ids.py, tests/api/test_public_ids.py   someone else's id is the
                                      same 404 as an unknown one, before any query of its own
  tests/merchants/test_payments_api.py, test_checkout_api.py, test_merchants_api.py
                                      another merchant's payment/session/merchant is a 404;
                                      revoked, rolled and suspended keys; scopes
  tests/services/test_wallet.py       idempotency keys scoped per user, replays, conflicts
  tests/concurrency/test_idempotency.py   the same key in flight at once

Hostile input
  test_hostile_bodies.py              every JSON operation with a body (from the OpenAPI
                                      schemas): broken JSON, arrays, over the size limit, deep
                                      nesting, huge numbers, lone surrogates, NUL characters;
                                      every page form with NUL, surrogates, an oversized field
  tests/api/test_conventions.py       the API machinery's 400/413/422 answers, field named

Secrets
  test_secrets_scan.py                one full run, then every log record (raw and as the JSON
                                      and text console lines), every response body (bar the one
                                      that showed a secret once), pg_dump and Redis hold no card
                                      number, security code, key, token or password
  test_no_card_data_in_logs.py        card numbers and codes never in SQL logging during card use
  tests/observability/test_mail_logs.py, test_logging.py   mail bodies never logged; the mask
  tests/merchants/test_payments_api.py::test_a_key_never_reaches_a_log_line_or_a_stored_row

Known failures: none (each one found was fixed, and its test kept).
"""
