"""Unbound extension instances, initialised in ``create_app``."""

from __future__ import annotations

from flask_limiter import Limiter
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect

from portal.models import Base


def _client_address() -> str:
    # ProxyFix (configured with PORTAL_PROXY_COUNT) has already set remote_addr from the
    # trusted proxies' headers; the raw X-Forwarded-For is never read here.
    from flask import request

    return request.remote_addr or "unknown"


db = SQLAlchemy(metadata=Base.metadata)
migrate = Migrate(directory="migrations")
csrf = CSRFProtect()
# No per-process memory fallback: the storage (portal.web.ratelimit) falls back to PostgreSQL.
limiter = Limiter(key_func=_client_address, headers_enabled=True)
