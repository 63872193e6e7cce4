"""The staff console (``/admin``): the overview, every record in searchable tables with detail
pages and their audit trail, the queues, adjustments, reconciliation and the audit log.

Every page needs a signed-in member of staff (a permission beyond the self-service ones) who
has passed the second factor in this session; each page and action also names the permission
it needs (``support`` reads, ``admin`` acts), and the services check again.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")

# Each module registers its routes on bp.
from portal.admin import (  # noqa: E402
    adjustments,
    audit,
    cards,
    merchants,
    money,
    people,
    queues,
    reconciliation,
    views,
)

__all__ = [
    "adjustments",
    "audit",
    "bp",
    "cards",
    "merchants",
    "money",
    "people",
    "queues",
    "reconciliation",
    "views",
]
