"""The wallet pages (``/wallet``): the dashboard with card tiles, balances, latest activity and
a monthly chart; issuing, naming and freezing cards; top-up, transfer and withdrawal with a
review step; the history with filters and CSV export; and the live-update poll.

Views parse forms and call the wallet, card and activity services; they never move money
themselves and never see a full card number except the one ``issue_card`` returns, once.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("cardholder", __name__, url_prefix="/wallet")

from portal.cardholder import pay, statements, views  # noqa: E402  (each registers its routes on bp)

__all__ = ["bp", "pay", "statements", "views"]
