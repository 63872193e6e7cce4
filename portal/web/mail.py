"""Outgoing email: through SMTP when ``PORTAL_SMTP_URL`` is set (production requires it).

Sent after the service has committed, never inside a transaction. Bodies carry password-reset,
verification and invitation links, so a body never reaches a log in any mode: the log says a
mail went out, to whom, and its subject. Without SMTP (development and tests) the message is
kept in the in-process outbox, and in development only it is also shown on the console
(stderr, not the logger), so the links can be clicked.
"""

from __future__ import annotations

import logging
import smtplib
import sys
from collections import deque
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from flask import current_app

log = logging.getLogger("portal.mail")


def _show_on_console(message: EmailMessage) -> None:
    """Development only: the whole message on stderr, marked as such."""
    rule = "-" * 72
    sys.stderr.write(
        f"{rule}\nemail (development only: no PORTAL_SMTP_URL, so shown here instead of sent;"
        f" never logged)\nTo: {message['To']}\nSubject: {message['Subject']}\n\n"
        f"{message.get_content().rstrip()}\n{rule}\n"
    )
    sys.stderr.flush()


def send(to: str, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = current_app.config["MAIL_FROM"]
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    url = current_app.config.get("SMTP_URL")
    if not url:
        # The last messages stay readable in-process (tests and development read them).
        current_app.extensions.setdefault("portal.outbox", deque(maxlen=100)).append(message)
        log.info("email not sent (no SMTP configured) to=%s subject=%r", to, subject)
        if current_app.config.get("PORTAL_ENV") == "development":
            _show_on_console(message)
        return
    parts = urlsplit(url)  # smtp://user:pass@host:587 or smtps://...
    smtp_class = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    with smtp_class(parts.hostname or "localhost", parts.port or 25, timeout=10) as smtp:
        if parts.scheme == "smtp+starttls":
            smtp.starttls()
        if parts.username:
            smtp.login(unquote(parts.username), unquote(parts.password or ""))
        smtp.send_message(message)
    log.info("email sent to=%s subject=%r", to, subject)
