"""Per-request glue: request ids, trusted proxies and security headers."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from portal.services.shared import audit

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

#: No inline scripts or styles anywhere; a page that needs more sets its own header.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def init_app(app: Flask) -> None:
    proxies = int(app.config.get("PROXY_COUNT") or 0)
    if proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies
        )

    @app.before_request
    def assign_request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
        # Audit events of this request carry its client address (ProxyFix has set it).
        audit.bind_address(request.remote_addr)

    @app.teardown_request
    def unbind_address(_error: BaseException | None) -> None:
        audit.bind_address(None)  # a reused thread must not lend it to the next request

    @app.after_request
    def finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or f"req_{uuid.uuid4().hex}"
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if request.is_secure:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        return response
