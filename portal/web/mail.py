"""Outgoing email: through SMTP when ``PORTAL_SMTP_URL`` is set, else to the log (development).

Sent after the service has committed, never inside a transaction.
"""

from __future__ import annotations

import logging
import smtplib
from collections import deque
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from flask import current_app

log = logging.getLogger("portal.mail")


def send(to: str, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = current_app.config["MAIL_FROM"]
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    url = current_app.config.get("SMTP_URL")
    if not url:
        log.info("email (no SMTP configured) to=%s subject=%r\n%s", to, subject, body)
        # The last messages stay readable in-process (tests and development read them).
        current_app.extensions.setdefault("portal.outbox", deque(maxlen=100)).append(message)
        return
    parts = urlsplit(url)  # smtp://user:pass@host:587 or smtps://...
    smtp_class = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    with smtp_class(parts.hostname or "localhost", parts.port or 25, timeout=10) as smtp:
        if parts.scheme == "smtp+starttls":
            smtp.starttls()
        if parts.username:
            smtp.login(unquote(parts.username), unquote(parts.password or ""))
        smtp.send_message(message)
