"""Forged and misused access tokens against the real API, over HTTP.

``tests/services/test_tokens.py`` proves the verifier claim by claim (alg none, HS384/HS512,
RS256 confusion, wrong key, expiry, the future, wrong and missing claims, header typ, refresh
as access). This module sends each attack as an ``Authorization: Bearer`` header to a real
route (``GET /api/v1/auth/me``) and adds the header tricks the verifier could be fooled by: an
embedded ``jwk`` (RSA or symmetric), ``jku``/``x5u`` pointing elsewhere, ``kid`` injection,
unknown ``crit`` extensions and an unencoded (``b64: false``) payload. Each must be a 401
that says nothing of the user; the same forge with nothing changed is
accepted, so every refusal is about the one thing changed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from flask import Flask
from flask.testing import FlaskClient

from portal.extensions import limiter
from portal.services.identity import tokens
from portal.services.shared.uow import UnitOfWork
from tests.api.test_auth_api import API, bearer, client_for, person

ATTACKER_KEY = b"attacker-chosen-hmac-key-0123456789abcdef"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def part(data: dict[str, Any]) -> str:
    return b64(json.dumps(data, separators=(",", ":")).encode())


def unpart(segment: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def hmac_sign(signing_input: str, key: bytes, alg: str = "HS256") -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return b64(hmac.new(key, signing_input.encode(), digest).digest())


def signed(header: dict[str, Any], claims: dict[str, Any], key: bytes, alg: str = "HS256") -> str:
    signing_input = f"{part(header)}.{part(claims)}"
    return f"{signing_input}.{hmac_sign(signing_input, key, alg)}"


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _int(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def rsa_signed(header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{part(header)}.{part(claims)}"
    signature = RSA_KEY.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def ec_signed(header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{part(header)}.{part(claims)}"
    r, s = decode_dss_signature(EC_KEY.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def rsa_jwk() -> dict[str, str]:
    numbers = RSA_KEY.public_key().public_numbers()
    return {"kty": "RSA", "n": _int(numbers.n), "e": _int(numbers.e)}


def ec_jwk() -> dict[str, str]:
    numbers = EC_KEY.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _int(numbers.x), "y": _int(numbers.y)}


HEADER = {"alg": "HS256", "typ": "at+jwt"}


@pytest.fixture
def genuine(app: Flask, connection: Any, uow: UnitOfWork) -> tuple[str, dict[str, Any], str]:
    """A real access token, its claims and the refresh token issued with it."""
    limiter.reset()
    user = person(uow, "cardholder")
    pair = tokens.issue_tokens(uow, user_id=user.id, user_agent="jwt-attacks")
    return pair.access_token, unpart(pair.access_token.split(".")[1]), pair.refresh_token


def attacks(
    token: str, claims: dict[str, Any], refresh: str, key: bytes
) -> dict[str, Callable[[], str]]:
    now = int(time.time())
    head, payload, signature = token.split(".")

    def ours(header: dict[str, Any] | None = None, **changes: Any) -> str:
        return signed({**HEADER, **(header or {})}, {**claims, **changes}, key)

    def crit_unencoded() -> str:
        # RFC 7797: with b64 false the payload is signed as it is, not base64url-encoded.
        header = {**HEADER, "b64": False, "crit": ["b64"]}
        raw = json.dumps(claims, separators=(",", ":"))
        signing_input = f"{part(header)}.{raw}"
        return f"{part(header)}.{raw}.{hmac_sign(signing_input, key)}"

    return {
        # alg none, in each spelling, with and without the real signature kept.
        "alg none": lambda: f"{part({'alg': 'none', 'typ': 'at+jwt'})}.{payload}.",
        "alg None": lambda: f"{part({'alg': 'None', 'typ': 'at+jwt'})}.{payload}.",
        "alg NONE": lambda: f"{part({'alg': 'NONE', 'typ': 'at+jwt'})}.{payload}.",
        "alg none, signature kept": lambda: (
            f"{part({'alg': 'none', 'typ': 'at+jwt'})}.{payload}.{signature}"
        ),
        "no alg": lambda: signed({"typ": "at+jwt"}, claims, key),
        # Other HMACs under our key; asymmetric algorithms over our key (confusion).
        "HS384 under our key": lambda: signed({**HEADER, "alg": "HS384"}, claims, key, "HS384"),
        "HS512 under our key": lambda: signed({**HEADER, "alg": "HS512"}, claims, key, "HS512"),
        "RS256 header over our HMAC": lambda: (
            f"{part({'alg': 'RS256', 'typ': 'at+jwt'})}.{payload}.{signature}"
        ),
        "ES256 header over our HMAC": lambda: (
            f"{part({'alg': 'ES256', 'typ': 'at+jwt'})}.{payload}.{signature}"
        ),
        # Keys the token brings along.
        "RS256 with its own embedded jwk": lambda: rsa_signed(
            {"alg": "RS256", "typ": "at+jwt", "jwk": rsa_jwk()}, claims
        ),
        "ES256 with its own embedded jwk": lambda: ec_signed(
            {"alg": "ES256", "typ": "at+jwt", "jwk": ec_jwk()}, claims
        ),
        "HS256 with an embedded symmetric jwk": lambda: signed(
            {**HEADER, "jwk": {"kty": "oct", "k": b64(ATTACKER_KEY)}}, claims, ATTACKER_KEY
        ),
        "jku pointing elsewhere": lambda: signed(
            {**HEADER, "jku": "https://attacker.example/jwks.json", "kid": "1"},
            claims,
            ATTACKER_KEY,
        ),
        "x5u pointing elsewhere": lambda: rsa_signed(
            {"alg": "RS256", "typ": "at+jwt", "x5u": "https://attacker.example/cert.pem"}, claims
        ),
        "kid path traversal, empty key": lambda: signed(
            {**HEADER, "kid": "../../../../../../dev/null"}, claims, b""
        ),
        "kid injection": lambda: signed(
            {**HEADER, "kid": "x' UNION SELECT 'attacker-chosen-hmac-key-0123456789abcdef"},
            claims,
            ATTACKER_KEY,
        ),
        "wrong key": lambda: signed(HEADER, claims, ATTACKER_KEY),
        # Extensions a verifier must understand or refuse (RFC 7515 4.1.11).
        "unknown crit": lambda: ours({"crit": ["x-portal-unknown"], "x-portal-unknown": True}),
        "crit naming a missing header": lambda: ours({"crit": ["x-missing"]}),
        "crit not a list": lambda: ours({"crit": "exp"}),
        "crit b64 false (unencoded payload)": crit_unencoded,
        # Claims.
        "wrong iss": lambda: ours(iss="https://attacker.example"),
        "wrong aud": lambda: ours(aud="someone-else"),
        "aud list without ours": lambda: ours(aud=["someone-else", "another"]),
        "typ refresh": lambda: ours(typ="refresh"),
        "typ id": lambda: ours(typ="id"),
        "header typ JWT": lambda: ours({"typ": "JWT"}),
        "no header typ": lambda: signed({"alg": "HS256"}, claims, key),
        "expired": lambda: ours(iat=now - 7200, exp=now - 3600),
        "issued in the future": lambda: ours(iat=now + 3600, exp=now + 4500),
        "not before the future": lambda: ours(nbf=now + 3600),
        "no exp": lambda: signed(HEADER, {k: v for k, v in claims.items() if k != "exp"}, key),
        "sub changed, signature kept": lambda: f"{head}.{part({**claims, 'sub': '1'})}.{signature}",
        "sub not a number": lambda: ours(sub="1 OR 1=1"),
        "unknown family": lambda: ours(fam="00000000-0000-4000-8000-000000000000"),
        # Shapes.
        "signature stripped": lambda: f"{head}.{payload}",
        "five parts (JWE shape)": lambda: f"{head}.{payload}.{signature}.x.y",
        "oversized": lambda: f"{head}.{payload}{'A' * 8000}.{signature}",
        # The other credential in the access token's place.
        "refresh token as access token": lambda: refresh,
    }


def _me(client: FlaskClient, token: str) -> Any:
    return client.get(f"{API}/auth/me", headers=bearer(token))


def test_the_forge_itself_is_accepted(app: Flask, genuine) -> None:
    """With nothing changed, the forged token works: every refusal below is about its change."""
    token, claims, _ = genuine
    key = app.config["SERVICE_SETTINGS"].jwt_key
    client = client_for(app)
    assert _me(client, token).status_code == 200
    assert _me(client, signed(HEADER, claims, key)).status_code == 200


def test_every_forged_or_misused_token_is_a_401(app: Flask, genuine) -> None:
    token, claims, refresh = genuine
    key = app.config["SERVICE_SETTINGS"].jwt_key
    client = client_for(app)
    accepted: list[str] = []
    for name, make_token in attacks(token, claims, refresh, key).items():
        response = _me(client, make_token())
        body = response.get_data(as_text=True)
        if response.status_code != 401 or '"email"' in body or '"object": "user"' in body:
            accepted.append(f"{name}: {response.status_code} {body[:200]}")
            continue
        # invalid_token for a token; unauthenticated for a header that is no bearer token at
        # all (the unencoded payload's JSON is not a token's characters).
        assert response.get_json()["error"]["code"] in ("invalid_token", "unauthenticated"), name
    assert not accepted, "\n".join(accepted)


def test_an_access_token_is_not_a_refresh_token(app: Flask, genuine) -> None:
    token, _, refresh = genuine
    client = client_for(app)
    as_refresh = client.post(f"{API}/auth/refresh", json={"refresh_token": token})
    as_logout = client.post(f"{API}/auth/logout", json={"refresh_token": token})
    assert as_refresh.status_code in (400, 401), as_refresh.get_data(as_text=True)
    assert "access_token" not in as_refresh.get_data(as_text=True)
    assert as_logout.status_code in (400, 401), as_logout.get_data(as_text=True)
    # Neither attempt changed anything: both tokens still work as themselves.
    assert _me(client, token).status_code == 200
    assert client.post(f"{API}/auth/refresh", json={"refresh_token": refresh}).status_code == 200
