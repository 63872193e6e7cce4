"""A small but real OpenID Connect provider for the tests, served on 127.0.0.1 by werkzeug in a
thread: discovery, ``/authorize`` (auto-approves the configured identity), ``/token`` (client
authentication, single-use code, redirect URI and PKCE S256 checks; an RS256 ID token signed
with joserfc), ``/jwks`` and ``/userinfo``.

Knobs on :class:`Provider` make it misbehave the ways a test needs: deny consent, sign with a
key it does not publish, send the wrong nonce or audience, leave the email out of the ID token.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import BaseWSGIServer, make_server


@dataclass
class Identity:
    """Who the provider says is signing in."""

    sub: str
    email: str | None
    email_verified: bool | str = True
    given_name: str | None = "Ada"
    family_name: str | None = "Lovelace"


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    identity: Identity
    expires_at: float


@dataclass
class Provider:
    client_id: str = "portal-test"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    redirect_uris: tuple[str, ...] = ("http://localhost/auth/sso/callback",)
    url: str = ""
    identity: Identity = field(default_factory=lambda: Identity("sub-1", "ada@example.test"))
    # Knobs, reset by reset():
    deny: bool = False
    nonce_override: str | None = None
    audience_override: str | None = None
    sign_with_unpublished_key: bool = False
    email_in_id_token: bool = True
    # What the provider saw, for assertions:
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})
        self.rogue_key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})
        self.grants: dict[str, Grant] = {}
        self.access_tokens: dict[str, Identity] = {}
        self._lock = threading.Lock()

    def reset(self, identity: Identity) -> None:
        self.identity = identity
        self.deny = False
        self.nonce_override = None
        self.audience_override = None
        self.sign_with_unpublished_key = False
        self.email_in_id_token = True
        self.authorize_requests.clear()
        self.token_requests.clear()

    # -- the ID token ------------------------------------------------------------------------
    def id_token(self, grant: Grant) -> str:
        now = int(time.time())
        who = grant.identity
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": who.sub,
            "aud": self.audience_override or grant.client_id,
            "iat": now,
            "exp": now + 300,
            "auth_time": now,
        }
        nonce = self.nonce_override or grant.nonce
        if nonce is not None:
            claims["nonce"] = nonce
        if self.email_in_id_token:
            claims.update(self.profile(who, with_sub=False))
        key = self.rogue_key if self.sign_with_unpublished_key else self.key
        return jwt.encode({"alg": "RS256", "kid": "k1", "typ": "JWT"}, claims, key)

    @staticmethod
    def profile(who: Identity, *, with_sub: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"sub": who.sub} if with_sub else {}
        if who.email is not None:
            data["email"] = who.email
            data["email_verified"] = who.email_verified
        if who.given_name is not None:
            data["given_name"] = who.given_name
        if who.family_name is not None:
            data["family_name"] = who.family_name
        return data

    # -- the web app -------------------------------------------------------------------------
    def wsgi(self) -> Flask:
        app = Flask("test_oidc_provider")

        def oauth_error(error: str, status: int = 400) -> tuple[Response, int]:
            return jsonify(error=error), status

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Response:
            return jsonify(
                issuer=self.url,
                authorization_endpoint=self.url + "/authorize",
                token_endpoint=self.url + "/token",
                jwks_uri=self.url + "/jwks",
                userinfo_endpoint=self.url + "/userinfo",
                response_types_supported=["code"],
                subject_types_supported=["public"],
                id_token_signing_alg_values_supported=["RS256"],
                scopes_supported=["openid", "email", "profile"],
                token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
                code_challenge_methods_supported=["S256"],
                claims_supported=["sub", "email", "email_verified", "given_name", "family_name"],
            )

        @app.get("/jwks")
        def jwks() -> Response:
            return jsonify(KeySet([self.key]).as_dict(private=False))

        @app.get("/authorize")
        def authorize() -> Any:
            args = request.args.to_dict()
            self.authorize_requests.append(args)
            redirect_uri = args.get("redirect_uri", "")
            if args.get("client_id") != self.client_id or redirect_uri not in self.redirect_uris:
                return "unknown client or redirect_uri", 400  # never redirect to an unknown URI
            back: dict[str, str] = {"state": args.get("state", "")}
            problem = None
            if args.get("response_type") != "code":
                problem = "unsupported_response_type"
            elif "openid" not in args.get("scope", "").split():
                problem = "invalid_scope"
            elif args.get("code_challenge_method") != "S256" or not args.get("code_challenge"):
                problem = "invalid_request"  # this provider insists on PKCE S256
            elif self.deny:
                problem = "access_denied"
            if problem:
                back["error"] = problem
            else:
                code = secrets.token_urlsafe(24)
                with self._lock:
                    self.grants[code] = Grant(
                        client_id=self.client_id,
                        redirect_uri=redirect_uri,
                        code_challenge=args["code_challenge"],
                        nonce=args.get("nonce"),
                        identity=self.identity,
                        expires_at=time.time() + 60,
                    )
                back["code"] = code
            return redirect(redirect_uri + "?" + urlencode(back))

        @app.post("/token")
        def token() -> Any:
            form = request.form.to_dict()
            self.token_requests.append(form)
            if request.authorization and request.authorization.type == "basic":
                client_id = request.authorization.username
                secret = request.authorization.password
            else:
                client_id, secret = form.get("client_id"), form.get("client_secret")
            if client_id != self.client_id or not secrets.compare_digest(
                secret or "", self.client_secret
            ):
                return oauth_error("invalid_client", 401)
            if form.get("grant_type") != "authorization_code":
                return oauth_error("unsupported_grant_type")
            with self._lock:
                grant = self.grants.pop(form.get("code", ""), None)  # single use
            if (
                grant is None
                or grant.expires_at < time.time()
                or grant.client_id != client_id
                or grant.redirect_uri != form.get("redirect_uri")
            ):
                return oauth_error("invalid_grant")
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode("ascii")).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
            if not verifier or not secrets.compare_digest(challenge, grant.code_challenge):
                return oauth_error("invalid_grant")
            access = secrets.token_urlsafe(24)
            self.access_tokens[access] = grant.identity
            return jsonify(
                access_token=access,
                token_type="Bearer",
                expires_in=300,
                scope="openid email profile",
                id_token=self.id_token(grant),
            )

        @app.get("/userinfo")
        def userinfo() -> Any:
            scheme, _, access = request.headers.get("Authorization", "").partition(" ")
            who = self.access_tokens.get(access) if scheme.lower() == "bearer" else None
            if who is None:
                return oauth_error("invalid_token", 401)
            return jsonify(self.profile(who))

        return app


class RunningProvider:
    """The provider served on 127.0.0.1 on a free port, in a daemon thread."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, provider.wsgi(), threaded=True)
        provider.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Provider:
        self.thread.start()
        return self.provider

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
